// The plan editor: the site to scale as SVG, gateways edited by direct manipulation.
//
// Modes: "select" (the default: click a gateway to read it, never edits), "move" (drag a
// gateway), "add" (click the floor), "delete" (click a gateway). With a gateway selected,
// the Delete key or the "delete selected" button removes it. Every edit is drawn at once
// (so the plan answers within a frame) and sent to Python as one trigger value
// {op, id, x, y, n}; further edits wait until Python's answer (a new `ack` in the data)
// arrives, so no edit is lost between two reruns. Python owns the layouts, undo and redo.
//
// An optional layer (a coverage map: per-cell colour index into a palette) is drawn under
// the plan's zones as outlines, and hovering a cell shows its value and the gateways that
// hear it. Module-level state (mode, selection) survives Streamlit's re-renders.

const NS = "http://www.w3.org/2000/svg";
const states = {}; // per instance (data.instance): the plan editor and each read-only map

function el(name, attrs, parent) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (parent) parent.appendChild(e);
  return e;
}

function pathOf(coords, X, Y) {
  return coords.map((p, i) => (i ? "L" : "M") + X(p[0]).toFixed(3) + " " + Y(p[1]).toFixed(3)).join(" ");
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const ui = (states[data.instance || "plan"] ||= { mode: "select", selected: null, busyAck: null, busySince: 0 });
  const root = parentElement.querySelector(".plan-editor");
  root.innerHTML = "";
  if (ui.busyAck !== null && data.ack !== ui.busyAck) ui.busyAck = null; // Python answered
  const editable = !!data.editable;
  if (!editable) ui.mode = "select";
  let gws = data.gateways.map((g) => ({ ...g }));
  if (ui.selected && !gws.some((g) => g.id === ui.selected)) ui.selected = null;

  // -- toolbar --------------------------------------------------------------------------
  const bar = document.createElement("div");
  bar.className = "bar";
  root.appendChild(bar);
  const modes = editable
    ? [["select", "Select"], ["move", "Move (drag)"], ["add", "Add"], ["delete", "Delete"]]
    : [];
  const buttons = {};
  for (const [m, label] of modes) {
    const b = document.createElement("button");
    b.textContent = label;
    b.dataset.mode = m;
    b.title = {
      select: "click a gateway to read it; nothing is changed",
      move: "drag a gateway to where it goes",
      add: "click the floor to add a gateway there",
      delete: "click a gateway to remove it",
    }[m];
    b.onclick = () => { ui.mode = m; paintMode(); };
    bar.appendChild(b);
    buttons[m] = b;
  }
  const delSel = document.createElement("button");
  delSel.textContent = "Delete selected";
  delSel.className = "del-selected";
  if (editable) bar.appendChild(delSel);
  const hint = document.createElement("span");
  hint.className = "hint";
  bar.appendChild(hint);

  const [minx, miny, maxx, maxy] = data.bounds;
  const pad = 1.0;
  const W = maxx - minx + 2 * pad, H = maxy - miny + 2 * pad;
  const X = (x) => x - minx + pad;
  const Y = (y) => maxy - y + pad;
  const invX = (sx) => sx + minx - pad;
  const invY = (sy) => maxy + pad - sy;

  const wrap = document.createElement("div");
  wrap.className = "canvas";
  root.appendChild(wrap);
  // data-* say how plan metres map to SVG units (tests and tools convert through them).
  const svg = el("svg", {
    viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "xMidYMid meet",
    "data-minx": minx, "data-maxy": maxy, "data-pad": pad,
  }, wrap);
  const width = Math.max(300, Math.min(root.clientWidth || 900, 1400));
  const heightPx = Math.min(width * (H / W), data.max_height || 640);
  svg.setAttribute("width", "100%");
  svg.setAttribute("height", heightPx.toFixed(0));
  const scale = Math.min((root.clientWidth || width) / W, heightPx / H); // px per metre
  const px = (p) => p / scale;

  const tip = document.createElement("div");
  tip.className = "tip";
  wrap.appendChild(tip);
  const readout = document.createElement("div");
  readout.className = "readout";
  root.appendChild(readout);
  if (data.layer && data.layer.legend) {
    const legend = document.createElement("div");
    legend.className = "legend";
    legend.innerHTML = `<b>${data.layer.label}</b> ` + data.layer.legend
      .map(([c, n]) => `<span class="key"><i style="background:${c}"></i>${n}</span>`).join("");
    root.appendChild(legend);
  }

  // -- the plan: floor, layer, zones, racks, walls -------------------------------------
  el("path", { d: pathOf(data.outline, X, Y) + " Z", class: "floor" }, svg);
  const layer = data.layer;
  if (layer) {
    // One pixel per cell on a canvas, shown as one image: thousands of cells cost one node.
    const c = document.createElement("canvas");
    c.width = layer.nx; c.height = layer.ny;
    const ctx = c.getContext("2d");
    const img = ctx.createImageData(layer.nx, layer.ny);
    const rgb = layer.palette.map((h) => [1, 3, 5].map((o) => parseInt(h.slice(o, o + 2), 16)));
    for (let j = 0; j < layer.ny; j++) {
      for (let i = 0; i < layer.nx; i++) {
        const k = layer.index[j * layer.nx + i];
        if (k < 0) continue;
        const o = ((layer.ny - 1 - j) * layer.nx + i) * 4; // row 0 of the image is the top (max y)
        img.data[o] = rgb[k][0]; img.data[o + 1] = rgb[k][1]; img.data[o + 2] = rgb[k][2];
        img.data[o + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    el("image", {
      href: c.toDataURL(), x: X(layer.x0), y: Y(layer.y0 + layer.ny * layer.cell),
      width: layer.nx * layer.cell, height: layer.ny * layer.cell,
      preserveAspectRatio: "none", class: "layer",
    }, svg);
  }
  for (const z of data.zones) {
    el("path", {
      d: pathOf(z.coords, X, Y) + " Z",
      class: layer ? "zone over" : "zone",
      fill: layer ? "none" : z.colour,
      stroke: layer ? "#444" : "none",
    }, svg);
  }
  for (const r of data.racks) el("path", { d: pathOf(r, X, Y) + " Z", class: "rack" }, svg);
  for (const w of data.walls) el("path", { d: pathOf(w, X, Y), class: "wall", "stroke-width": px(3) }, svg);
  el("path", { d: pathOf(data.outline, X, Y) + " Z", class: "wall", fill: "none", "stroke-width": px(3) }, svg);
  const zoneNames = el("g", {}, svg);
  const gwLayer = el("g", {}, svg);

  // Zone names go to the first of their spots that no gateway label covers (boxes in px).
  function placeZoneNames() {
    zoneNames.innerHTML = "";
    const boxes = gws.map((g) => [px(-10) + X(g.x), Y(g.y) - px(20), X(g.x) + px(14 + 6.5 * g.id.length), Y(g.y) + px(10)]);
    for (const z of data.zones) {
      const half = px(3.2 * z.name.length), hh = px(8);
      const free = z.labels.find(([lx, ly]) => !boxes.some(([a, b, c, d]) =>
        X(lx) + half > a && X(lx) - half < c && Y(ly) + hh > b && Y(ly) - hh < d)) || z.labels[0];
      const t = el("text", { x: X(free[0]), y: Y(free[1]), class: "zone-name", "font-size": px(11) }, zoneNames);
      t.textContent = z.name;
    }
  }

  function drawGateways() {
    placeZoneNames();
    gwLayer.innerHTML = "";
    const r = px(8);
    for (const g of gws) {
      const grp = el("g", { class: "gw" + (g.id === ui.selected ? " selected" : ""), "data-id": g.id }, gwLayer);
      el("circle", { cx: X(g.x), cy: Y(g.y), r: r * 1.6, class: "hit" }, grp); // a generous target
      const tri = `${X(g.x)},${Y(g.y) - r} ${X(g.x) - r * 0.9},${Y(g.y) + r * 0.6} ${X(g.x) + r * 0.9},${Y(g.y) + r * 0.6}`;
      el("polygon", { points: tri, class: "mark", "stroke-width": px(1.5) }, grp);
      const right = X(g.x) + px(14 + 6.5 * g.id.length) > W; // near the right edge: label to the left
      const t = el("text", {
        x: right ? X(g.x) - r : X(g.x) + r, y: Y(g.y) - r * 0.7, class: "gw-label", "font-size": px(11),
        "text-anchor": right ? "end" : "start",
      }, grp);
      t.textContent = g.id;
    }
  }

  function paintMode() {
    for (const [m, b] of Object.entries(buttons)) b.classList.toggle("on", m === ui.mode);
    const busy = ui.busyAck !== null;
    delSel.disabled = busy || !ui.selected;
    delSel.textContent = ui.selected ? `Delete ${ui.selected}` : "Delete selected";
    root.classList.toggle("busy", busy);
    wrap.dataset.mode = ui.mode;
    hint.textContent = !editable ? "hover the plan to read a cell and the gateways that hear it" : busy ? "saving…" : {
      select: "Select: click a gateway to read it (nothing changes)",
      move: "Move: drag a gateway",
      add: "Add: click the floor",
      delete: "Delete: click a gateway",
    }[ui.mode];
    const sel = gws.find((g) => g.id === ui.selected);
    readout.textContent = sel
      ? `${sel.id}: x ${sel.x.toFixed(2)} m, y ${sel.y.toFixed(2)} m, z ${sel.z.toFixed(1)} m`
      : (data.message || "");
  }

  function send(edit) {
    ui.busyAck = data.ack;
    ui.busySince = performance.now();
    edit.n = (data.ack || 0) + 1;
    setTriggerValue("edit", edit);
    drawGateways();
    paintMode();
  }
  const busy = () => ui.busyAck !== null && performance.now() - ui.busySince < 8000;

  function toPlan(ev) {
    const pt = svg.createSVGPoint();
    pt.x = ev.clientX; pt.y = ev.clientY;
    const p = pt.matrixTransform(svg.getScreenCTM().inverse());
    return [Math.round(invX(p.x) * 10) / 10, Math.round(invY(p.y) * 10) / 10];
  }

  function cellAt(x, y) {
    if (!layer) return null;
    const i = Math.floor((x - layer.x0) / layer.cell), j = Math.floor((y - layer.y0) / layer.cell);
    if (i < 0 || j < 0 || i >= layer.nx || j >= layer.ny) return null;
    const k = j * layer.nx + i;
    return layer.index[k] < 0 ? null : k;
  }

  let drag = null;
  svg.addEventListener("pointerdown", (ev) => {
    const target = ev.target.closest(".gw");
    const id = target ? target.dataset.id : null;
    if (busy()) return;
    if (id && ui.mode === "move") {
      drag = { id, moved: false };
      svg.setPointerCapture(ev.pointerId);
      ev.preventDefault();
    } else if (id && ui.mode === "delete") {
      if (gws.length <= 1) { readout.textContent = `${id} is the last gateway; a layout needs at least one`; return; }
      gws = gws.filter((g) => g.id !== id);
      if (ui.selected === id) ui.selected = null;
      send({ op: "delete", id });
    } else if (!id && ui.mode === "add") {
      const [x, y] = toPlan(ev);
      gws.push({ id: "…", x, y, z: data.default_z });
      send({ op: "add", x, y });
    } else if (ui.mode === "select") {
      ui.selected = id;
      drawGateways();
      paintMode();
    }
  });
  svg.addEventListener("pointermove", (ev) => {
    const [x, y] = toPlan(ev);
    if (drag) {
      const g = gws.find((q) => q.id === drag.id);
      g.x = x; g.y = y; drag.moved = true;
      drawGateways();
      readout.textContent = `${g.id} → (${x.toFixed(1)}, ${y.toFixed(1)})`;
      return;
    }
    const over = ev.target.closest(".gw");
    let text = "";
    if (over) {
      const g = gws.find((q) => q.id === over.dataset.id);
      if (g) text = `${g.id}<br>x ${g.x.toFixed(1)} m, y ${g.y.toFixed(1)} m, z ${g.z.toFixed(1)} m`;
    } else {
      text = `x ${x.toFixed(1)} m, y ${y.toFixed(1)} m`;
      const k = cellAt(x, y);
      if (k !== null) {
        const v = layer.values[k];
        text += `<br>${layer.label}: ${v === null ? "—" : v}`;
        const heard = (layer.heard[k] || []).map(([i, dbm]) =>
          `${data.gateways[i] ? data.gateways[i].id : "?"} (${dbm} dBm)`);
        text += `<br>heard by ${heard.length}: ${heard.join(", ") || "none"}`;
        if (layer.pass) text += `<br>requirement: ${layer.pass[k] ? "met" : "NOT met"}`;
        if (layer.extra) text += `<br>${layer.extra[k]}`;
      }
    }
    const box = wrap.getBoundingClientRect();
    tip.innerHTML = text;
    tip.style.display = text ? "block" : "none";
    tip.style.left = `${ev.clientX - box.left + 14}px`;
    tip.style.top = `${ev.clientY - box.top + 14}px`;
  });
  svg.addEventListener("pointerleave", () => { tip.style.display = "none"; });
  svg.addEventListener("pointerup", (ev) => {
    if (!drag) return;
    const d = drag;
    drag = null;
    svg.releasePointerCapture(ev.pointerId);
    if (!d.moved) return;
    const g = gws.find((q) => q.id === d.id);
    send({ op: "move", id: d.id, x: g.x, y: g.y });
  });
  delSel.onclick = () => {
    if (!ui.selected || busy()) return;
    const id = ui.selected;
    if (gws.length <= 1) return;
    gws = gws.filter((g) => g.id !== id);
    ui.selected = null;
    send({ op: "delete", id });
  };
  const onKey = (ev) => {
    if ((ev.key === "Delete" || ev.key === "Backspace") && ui.selected && editable && !busy()
        && root.matches(":hover")) {
      delSel.onclick();
    }
  };
  document.addEventListener("keydown", onKey);

  drawGateways();
  paintMode();
  return () => document.removeEventListener("keydown", onKey);
}
