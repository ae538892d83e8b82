// rlhfkit labeling pages: keyboard shortcuts, drag-to-rank, time spent.
// Loaded from this server only (the Content-Security-Policy allows no inline code).
(function () {
  "use strict";
  var page = document.body.dataset.page;
  var started = Date.now();

  function byId(id) { return document.getElementById(id); }

  // Every form: record the time spent; ignore a second submit of the same page
  // (the server records a repeated submit once anyway).
  Array.prototype.forEach.call(document.querySelectorAll("form"), function (form) {
    form.addEventListener("submit", function (event) {
      if (form.dataset.sent === "1") { event.preventDefault(); return; }
      form.dataset.sent = "1";
      var field = form.querySelector("input[name=time_spent_ms]");
      if (field) { field.value = String(Date.now() - started); }
    });
  });

  function submit(formId, buttonId) {
    var form = byId(formId);
    if (!form) { return; }
    var button = buttonId ? byId(buttonId) : null;
    if (form.requestSubmit) { form.requestSubmit(button || undefined); }
    else if (button) { button.click(); } else { form.submit(); }
  }

  function typing(target) {
    if (!target) { return false; }
    var tag = target.tagName;
    if (tag === "TEXTAREA" || target.isContentEditable) { return true; }
    return tag === "INPUT" && target.type !== "radio" && target.type !== "checkbox";
  }

  // ---- pairwise ------------------------------------------------------------
  function fieldsets() { return Array.prototype.slice.call(document.querySelectorAll("fieldset.dimension")); }
  function activeFieldset() { return document.querySelector("fieldset.dimension.active"); }
  function activate(fs) {
    fieldsets().forEach(function (f) { f.classList.toggle("active", f === fs); });
  }
  function advance(fs) {
    var all = fieldsets();
    var next = all[all.indexOf(fs) + 1];
    if (next) { activate(next); }
  }
  function checked(fs, group) {
    var input = fs.querySelector("." + group + " input:checked");
    return input ? input.value : null;
  }
  function pairwiseKey(key) {
    var fs = activeFieldset();
    if (!fs) { return false; }
    var choice = fs.querySelector('.choices input[data-key="' + key + '"]');
    if (choice) {
      choice.checked = true;
      if (choice.value === "tie" || choice.value === "both_bad") {
        Array.prototype.forEach.call(fs.querySelectorAll(".margins input"), function (m) { m.checked = false; });
        advance(fs);
      } else if (checked(fs, "margins")) { advance(fs); }
      return true;
    }
    var margin = fs.querySelector('.margins input[data-key="' + key + '"]');
    if (margin) {
      margin.checked = true;
      var c = checked(fs, "choices");
      if (c === "tie" || c === "both_bad") {
        fs.querySelector('.choices input[value="' + c + '"]').checked = false;
      }
      if (c === "A" || c === "B") { advance(fs); }
      return true;
    }
    var target = fieldsets().filter(function (f) { return f.dataset.dimension.charAt(0) === key; })[0];
    if (target) { activate(target); return true; }
    return false;
  }
  fieldsets().forEach(function (fs) {
    fs.addEventListener("click", function () { activate(fs); });
  });

  // ---- ranking -------------------------------------------------------------
  function items() { return Array.prototype.slice.call(document.querySelectorAll(".rank-item")); }
  function selected() { return document.querySelector(".rank-item.selected"); }
  function select(item) {
    items().forEach(function (it) { it.classList.toggle("selected", it === item); });
  }
  function tabs() { return Array.prototype.slice.call(document.querySelectorAll(".dimtab")); }
  function activeDimension() {
    var tab = document.querySelector(".dimtab.active");
    return tab ? tab.dataset.dimension : null;
  }
  function setDimension(dim) {
    tabs().forEach(function (t) { t.classList.toggle("active", t.dataset.dimension === dim); });
    Array.prototype.forEach.call(document.querySelectorAll(".rank-select"), function (label) {
      label.classList.toggle("active", label.dataset.dimension === dim);
    });
  }
  function rankSelect(item, dim) {
    return item.querySelector('select[name="' + dim + "_rank_" + item.dataset.index + '"]');
  }
  function ranksFromOrder() {
    var dim = activeDimension();
    items().forEach(function (item, position) { rankSelect(item, dim).value = String(position + 1); });
  }
  function rankingKey(key) {
    var all = items();
    var current = selected() || all[0];
    var at = all.indexOf(current);
    if (key === "j") { select(all[Math.min(at + 1, all.length - 1)]); return true; }
    if (key === "k") { select(all[Math.max(at - 1, 0)]); return true; }
    if (/^[1-9]$/.test(key) && Number(key) <= all.length) {
      rankSelect(current, activeDimension()).value = key;
      select(all[Math.min(at + 1, all.length - 1)]);
      return true;
    }
    var tab = tabs().filter(function (t) { return t.dataset.dimension.charAt(0) === key; })[0];
    if (tab) { setDimension(tab.dataset.dimension); return true; }
    return false;
  }
  if (page === "ranking") {
    setDimension(activeDimension());
    tabs().forEach(function (t) { t.addEventListener("click", function () { setDimension(t.dataset.dimension); }); });
    var dragged = null;
    items().forEach(function (item) {
      item.addEventListener("click", function () { select(item); });
      item.addEventListener("dragstart", function (e) {
        dragged = item;
        e.dataTransfer.effectAllowed = "move";
        e.dataTransfer.setData("text/plain", item.dataset.index);
      });
      item.addEventListener("dragover", function (e) { e.preventDefault(); });
      item.addEventListener("drop", function (e) {
        e.preventDefault();
        if (!dragged || dragged === item) { return; }
        var list = item.parentNode;
        var after = items().indexOf(dragged) < items().indexOf(item);
        list.insertBefore(dragged, after ? item.nextSibling : item);
        ranksFromOrder();
        select(dragged);
      });
    });
  }

  // ---- shortcuts ----------------------------------------------------------
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) { return; }
    if (typing(event.target)) { return; }  // the reason box: Enter flags, letters type
    var key = event.key;
    var handled = true;
    if (key === "u" && byId("undo")) { submit("undo"); }
    else if (key === "g") { window.location.href = "/guidelines"; }
    else if (key === "n" && byId("skipflag")) { submit("skipflag", "skip-button"); }
    else if (key === "f" && byId("reason")) { byId("reason").focus(); }
    else if (key === "Enter" && byId("judgment")) { submit("judgment", "submit-button"); }
    else if (page === "pairwise") { handled = pairwiseKey(key); }
    else if (page === "ranking") { handled = rankingKey(key); }
    else { handled = false; }
    if (handled) { event.preventDefault(); }
  });
})();
