// The Locus live dashboard: one EventSource on /v1/stream; a snapshot of last positions,
// then live fixes. Markers move, coloured by presence; the list shows last-seen and status.
// Playback: a time range of the tenant's fixes from /v1/tenants/{t}/replay, paced by the
// server at the chosen speed, each user's track drawn as it grows; pause, seek, back to live.
import L from "leaflet";

const $ = (id) => document.getElementById(id);
const COLORS = { online: "#1f8a4c", stale: "#d49a1a", offline: "#8a8f9c" };

let settings = { tile_url: "", tile_attribution: "", online_s: 60, offline_s: 600 };
const users = new Map(); // user_id → { lat, lon, ts, seq, device_id, marker, row, track }
const recent = []; // arrival times of fixes in the last 5 s
let follow = true; // keep every user in view until the viewer moves the map
let fitted = false; // the first positions always set the view
let token = "";
let live = null; // the live EventSource
// Playback state: the range, where it is, and its EventSource while playing.
const pb = { on: false, from: 0, to: 0, at: 0, es: null };
const clock = () => (pb.on ? pb.at : Date.now());


function tokenFromPage() {
  const hash = new URLSearchParams(location.hash.slice(1));
  const t = hash.get("token") || sessionStorage.getItem("locus-token");
  if (hash.get("token")) {
    sessionStorage.setItem("locus-token", hash.get("token"));
    history.replaceState(null, "", location.pathname); // keep the token out of the address bar
  }
  return t;
}

function tenantOf(token) {
  try {
    const body = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(body)).tenant || "";
  } catch {
    return "";
  }
}

function statusOf(ts, now) {
  const age = (now - ts) / 1000;
  if (age < settings.online_s) return "online";
  if (age < settings.offline_s) return "stale";
  return "offline";
}

function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  return `${Math.floor(s / 3600)}h ago`;
}

const map = L.map("map", { worldCopyJump: true, zoomSnap: 0.25 }).setView([20, 0], 2);
L.control.scale().addTo(map);
const grid = L.layerGroup().addTo(map);

// Without tiles the map still needs a sense of place: a lat/lon graticule at a step that
// suits the zoom.
function drawGrid() {
  grid.clearLayers();
  const b = map.getBounds();
  const span = Math.max(b.getEast() - b.getWest(), b.getNorth() - b.getSouth());
  const step = [30, 10, 5, 1, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001].find((s) => span / s >= 4 && span / s <= 40) || 0.001;
  const south = Math.max(-85, Math.floor(b.getSouth() / step) * step);
  const north = Math.min(85, Math.ceil(b.getNorth() / step) * step);
  const west = Math.floor(b.getWest() / step) * step;
  const east = Math.ceil(b.getEast() / step) * step;
  for (let lat = south; lat <= north + 1e-9; lat += step) {
    L.polyline([[lat, west], [lat, east]], { className: "grid", interactive: false }).addTo(grid);
  }
  for (let lon = west; lon <= east + 1e-9; lon += step) {
    L.polyline([[south, lon], [north, lon]], { className: "grid", interactive: false }).addTo(grid);
  }
}
map.on("moveend", drawGrid);

// Anything from a device is text, never markup: Leaflet puts a string tooltip in innerHTML,
// so the tooltip gets an element whose textContent is the id.
function textElement(text) {
  const span = document.createElement("span");
  span.textContent = text;
  return span;
}

function upsert(p, now) {
  let u = users.get(p.user_id);
  if (u && p.ts <= u.ts) return; // positions only move forward (duplicates and late fixes)
  if (!u) {
    const marker = L.circleMarker([p.lat, p.lon], { radius: 7, weight: 2, fillOpacity: 0.85 })
      .bindTooltip(textElement(p.user_id), { permanent: users.size < 50, direction: "right", offset: [8, 0] })
      .addTo(map);
    marker.getElement()?.setAttribute("data-user", p.user_id);
    const row = document.createElement("tr");
    row.dataset.user = p.user_id;
    row.innerHTML = "<td></td><td class=status></td><td class=seen></td>";
    row.firstChild.textContent = p.user_id;
    row.addEventListener("click", () => map.panTo(marker.getLatLng()));
    $("users").tBodies[0].appendChild(row);
    u = { marker, row };
    users.set(p.user_id, u);
    $("count").textContent = users.size;
  }
  Object.assign(u, { lat: p.lat, lon: p.lon, ts: p.ts, seq: p.seq, device_id: p.device_id });
  u.marker.setLatLng([p.lat, p.lon]);
  if (pb.on) {
    if (!u.track) {
      u.track = L.polyline([], { className: "track", interactive: false }).addTo(map);
      u.track.getElement?.()?.setAttribute("data-track", p.user_id);
    }
    u.track.addLatLng([p.lat, p.lon]);
    u.track.getElement()?.setAttribute("data-track", p.user_id);
    u.row.dataset.points = u.track.getLatLngs().length;
  }
  u.row.dataset.lat = p.lat;
  u.row.dataset.lon = p.lon;
  paint(u, now);
}

function paint(u, now) {
  const status = statusOf(u.ts, now);
  const color = COLORS[status];
  u.marker.setStyle({ color, fillColor: color });
  const cell = u.row.querySelector(".status");
  cell.textContent = status;
  cell.className = `status status-${status}`;
  u.row.querySelector(".seen").textContent = ago(now - u.ts);
}

// Follow mode: when a user is out of view, fit everyone in (until the viewer pans or zooms).
function keepInView() {
  if (!follow || users.size === 0) return;
  const view = map.getBounds();
  const pts = [...users.values()].map((u) => [u.lat, u.lon]);
  if (fitted && pts.every((p) => view.contains(p))) return;
  fitted = true;
  map.fitBounds(L.latLngBounds(pts).pad(0.3), { maxZoom: 15, animate: false });
}
for (const ev of ["mousedown", "wheel", "touchstart", "keydown"]) {
  map.getContainer().addEventListener(ev, () => { follow = false; }, { passive: true });
}

function notice(text) {
  $("notice").textContent = text;
}

function connState(state, text) {
  $("conn").className = `conn conn-${state}`;
  $("conn").textContent = text;
}

function connect() {
  $("tenant").textContent = tenantOf(token);
  const es = new EventSource(`/v1/stream?access_token=${encodeURIComponent(token)}`);
  live = es;
  es.onopen = () => connState("live", "live");
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      connState("closed", "closed");
      notice("The stream was refused (token invalid or expired?). Reload with a fresh token.");
      sessionStorage.removeItem("locus-token");
    } else {
      connState("connecting", "reconnecting");
    }
  };
  es.addEventListener("snapshot", (e) => {
    const { positions, complete } = JSON.parse(e.data);
    const now = Date.now();
    for (const p of positions) upsert(p, now);
    if (!complete) notice("Snapshot incomplete (cache unavailable or too many users); live fixes follow.");
    keepInView();
  });
  es.addEventListener("fix", (e) => {
    const now = Date.now();
    recent.push(now);
    upsert(JSON.parse(e.data), now);
    keepInView();
  });
  es.addEventListener("gap", (e) => {
    notice(`Some fixes could not be replayed (${JSON.parse(e.data).reason}); showing a fresh snapshot.`);
  });
  es.addEventListener("expired", () => {
    es.close();
    connState("closed", "expired");
    sessionStorage.removeItem("locus-token");
    notice("The token expired. Reload with a fresh one.");
  });
  es.addEventListener("overflow", () => notice("Catching up after falling behind…"));
}

setInterval(() => {
  const wall = Date.now();
  while (recent.length && wall - recent[0] > 5000) recent.shift();
  $("rate").textContent = (recent.length / 5).toFixed(1);
  const now = clock();
  for (const u of users.values()) paint(u, now);
}, 1000);

// ---- playback

function clearUsers() {
  for (const u of users.values()) {
    u.marker.remove();
    u.track?.remove();
    u.row.remove();
  }
  users.clear();
  $("count").textContent = 0;
  fitted = false;
  follow = true;
}

const localInput = (ms) => {
  const d = new Date(ms - new Date(ms).getTimezoneOffset() * 60000);
  return d.toISOString().slice(0, 19);
};
const fromInput = (v) => new Date(v).getTime();

function showAt(ms) {
  pb.at = ms;
  const span = Math.max(1, pb.to - pb.from);
  $("pb-slider").value = Math.round(((ms - pb.from) / span) * 1000);
  $("pb-time").textContent = new Date(ms).toLocaleString();
}

function stopPlaying() {
  pb.es?.close();
  pb.es = null;
  $("pb-play").textContent = "Play";
}

// Plays from pb.at to pb.to at the chosen speed; tracks already drawn are kept.
function play() {
  stopPlaying();
  pb.from = fromInput($("pb-from").value);
  pb.to = fromInput($("pb-to").value);
  if (!(pb.to > pb.from)) return notice("Pick a range: 'to' must be after 'from'.");
  if (pb.at < pb.from || pb.at >= pb.to) showAt(pb.from);
  const q = new URLSearchParams({ from: pb.at, to: pb.to, speed: $("pb-speed").value, access_token: token });
  const es = new EventSource(`/v1/tenants/${encodeURIComponent(tenantOf(token))}/replay?${q}`);
  pb.es = es;
  $("pb-play").textContent = "Pause";
  connState("playback", "playback");
  notice("");
  es.addEventListener("fix", (e) => {
    const p = JSON.parse(e.data);
    showAt(p.ts);
    upsert(p, p.ts);
    keepInView();
  });
  es.addEventListener("end", (e) => {
    const r = JSON.parse(e.data);
    stopPlaying();
    showAt(pb.to);
    $("playback").dataset.ended = "true";
    notice(`Played ${r.in_window} fixes.`);
  });
  es.onerror = () => {
    // A replay is not resumed by the browser (it would start over): stop and say so.
    if (pb.es !== es) return;
    stopPlaying();
    notice("The replay stopped (range too large, too many replays at once, or the token expired).");
  };
}

function enterPlayback() {
  live?.close();
  live = null;
  pb.on = true;
  document.body.classList.add("playback");
  $("playback").hidden = false;
  $("pb-open").hidden = true;
  clearUsers();
  const now = Date.now();
  if (!$("pb-from").value) $("pb-from").value = localInput(now - 3600_000);
  if (!$("pb-to").value) $("pb-to").value = localInput(now);
  pb.from = fromInput($("pb-from").value);
  pb.to = fromInput($("pb-to").value);
  showAt(pb.from);
  connState("playback", "playback");
}

function leavePlayback() {
  stopPlaying();
  pb.on = false;
  document.body.classList.remove("playback");
  $("playback").hidden = true;
  $("pb-open").hidden = false;
  clearUsers();
  notice("");
  connect();
}

$("pb-open").addEventListener("click", enterPlayback);
$("pb-live").addEventListener("click", leavePlayback);
$("pb-play").addEventListener("click", () => {
  delete $("playback").dataset.ended;
  if (pb.es) stopPlaying(); // pause: keep what is drawn and where it is
  else play();
});
// Seeking starts over from the chosen time (tracks are redrawn from there).
$("pb-slider").addEventListener("change", () => {
  const playing = !!pb.es;
  stopPlaying();
  clearUsers();
  pb.from = fromInput($("pb-from").value);
  pb.to = fromInput($("pb-to").value);
  showAt(pb.from + (Number($("pb-slider").value) / 1000) * (pb.to - pb.from));
  if (playing) play();
});
for (const id of ["pb-from", "pb-to"]) {
  $(id).addEventListener("change", () => {
    stopPlaying();
    clearUsers();
    pb.from = fromInput($("pb-from").value);
    pb.to = fromInput($("pb-to").value);
    showAt(pb.from);
  });
}
$("pb-speed").addEventListener("change", () => {
  if (pb.es) play(); // the same position at the new speed
});

async function start() {
  try {
    const r = await fetch("dashboard/config.json");
    if (r.ok) settings = { ...settings, ...(await r.json()) };
  } catch {
    // defaults apply
  }
  if (settings.tile_url) {
    L.tileLayer(settings.tile_url, { attribution: settings.tile_attribution, maxZoom: 19 }).addTo(map);
  }
  drawGrid();
  token = tokenFromPage() || "";
  if (token) return connect();
  $("login").hidden = false;
  $("login").addEventListener("submit", (e) => {
    e.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("locus-token", token);
    $("login").hidden = true;
    connect();
  });
}

start();
