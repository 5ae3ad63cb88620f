// Progressive enhancements only: every page works without this file.
"use strict";

// The Queue page: a "select every row" checkbox in the table's head (hidden without this
// script: without it, the rows are ticked one by one). It follows the rows: ticked when all
// are, half-ticked when some are.
document.querySelectorAll("input.select-all").forEach(function (all) {
  var table = all.closest("table");
  var rows = Array.prototype.slice.call(table.querySelectorAll("input.row-select"));
  if (rows.length === 0) {
    return;
  }
  function follow() {
    var ticked = rows.filter(function (row) { return row.checked; }).length;
    all.checked = ticked === rows.length;
    all.indeterminate = ticked > 0 && ticked < rows.length;
  }
  all.hidden = false;
  all.addEventListener("change", function () {
    rows.forEach(function (row) { row.checked = all.checked; });
    follow();
  });
  rows.forEach(function (row) { row.addEventListener("change", follow); });
  follow();
});
