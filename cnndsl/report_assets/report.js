// cnndsl report: open block boxes, fold table groups, sort columns. No requests of any kind.
(function () {
  "use strict";
  var detail = document.getElementById("detail");
  var store = document.getElementById("details");

  function openBlock(node) {
    var id = node.getAttribute("data-detail");
    var content = document.getElementById(id);
    if (!content) return;
    if (content.parentNode !== detail) detail.appendChild(content);
    Array.prototype.forEach.call(detail.children, function (child) { child.hidden = child !== content; });
    content.hidden = false;
    detail.hidden = false;
    var hint = document.getElementById("detail-hint");
    if (hint) hint.hidden = true;
    var svg = node.ownerSVGElement;
    Array.prototype.forEach.call(svg.querySelectorAll("g.node.selected"), function (g) { g.classList.remove("selected"); });
    node.classList.add("selected");
    content.scrollIntoView({block: "nearest"});
  }

  function cellValue(row, column, numeric) {
    var cell = row.cells[column];
    if (!cell) return numeric ? 0 : "";
    if (numeric) return parseFloat(cell.getAttribute("data-v")) || 0;
    return cell.textContent.trim().toLowerCase();
  }

  function sortTable(th) {
    var table = th.closest("table");
    var column = th.cellIndex;
    var numeric = th.getAttribute("data-type") === "num";
    var ascending = !th.classList.contains("asc");
    Array.prototype.forEach.call(th.parentNode.cells, function (c) { c.classList.remove("asc", "desc"); });
    th.classList.add(ascending ? "asc" : "desc");
    function compare(a, b) {
      var x = cellValue(a, column, numeric), y = cellValue(b, column, numeric);
      var order = x < y ? -1 : x > y ? 1 : 0;
      return ascending ? order : -order;
    }
    var bodies = Array.prototype.slice.call(table.tBodies);
    bodies.forEach(function (body) {
      var head = body.querySelector("tr.group-head");
      var members = Array.prototype.slice.call(body.querySelectorAll("tr.member")).sort(compare);
      members.forEach(function (row) { body.appendChild(row); });
      if (head) body.insertBefore(head, body.firstChild);
    });
    bodies.sort(function (a, b) { return compare(a.rows[0], b.rows[0]); });
    bodies.forEach(function (body) { table.appendChild(body); });
  }

  document.addEventListener("click", function (event) {
    var target = event.target;
    var node = target.closest && target.closest("g.node.expandable");
    if (node) { openBlock(node); return; }
    var head = target.closest && target.closest("tr.group-head");
    if (head) { head.parentNode.classList.toggle("collapsed"); return; }
    var th = target.closest && target.closest("thead th[data-type]");
    if (th) { sortTable(th); return; }
    if (target.id === "open-all" || target.id === "close-all") {
      var close = target.id === "close-all";
      Array.prototype.forEach.call(document.querySelectorAll("#layer-table tbody.group"), function (body) {
        body.classList.toggle("collapsed", close);
      });
    }
  });
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" && event.key !== " ") return;
    var node = event.target.closest && event.target.closest("g.node.expandable");
    if (node) { event.preventDefault(); openBlock(node); }
  });
  if (store) store.hidden = true;
})();
