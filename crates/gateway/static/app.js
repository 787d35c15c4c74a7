// The live page of the order scenario. It uses the public contract like any
// client: REST through the gateway (`/api/...`), then the realtime socket
// (`signalbox.v1`), authenticated by its first frame, subscribed to the
// user's own channel. No framework, no build step.
"use strict";

const $ = (selector) => document.querySelector(selector);

// What the page knows: the session, the socket, the orders it has seen.
const state = {
  config: null,        // GET /api/config
  tokens: null,        // {access_token, refresh_token, expires_in}
  user: null,          // {id, email}
  socket: null,
  socketIndex: 0,      // which of config.realtime.urls to use next
  socketUrl: null,
  reconnects: 0,
  retryTimer: null,
  subscribed: false,
  position: null,      // {epoch, offset} of the last event seen: what `recover` asks for
  wantSocket: false,
  orders: new Map(),   // order id → {state, total, events: [...]}
  products: new Map(), // product id → product
  current: null,       // the order whose hops the picture shows
};

// ---------------------------------------------------------------- REST ----

class ApiError extends Error {
  constructor(status, body) {
    super((body && (body.detail || body.error_description || body.title)) || `HTTP ${status}`);
    this.status = status;
    this.code = body && (body.code || body.error);
  }
}

// One call to the gateway; errors are problems (RFC 9457) with a `code`.
async function api(method, path, body, { auth = false, form = false } = {}) {
  const headers = {};
  let payload;
  if (form) {
    headers["Content-Type"] = "application/x-www-form-urlencoded";
    payload = new URLSearchParams(body).toString();
  } else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  if (auth) headers.Authorization = `Bearer ${state.tokens.access_token}`;
  const response = await fetch(path, { method, headers, body: payload });
  const text = await response.text();
  const json = text ? JSON.parse(text) : null;
  if (!response.ok) throw new ApiError(response.status, json);
  return { json, headers: response.headers };
}

// The trace id of a response, once the gateway sends `traceparent`
// (W3C: version-traceid-spanid-flags).
function traceId(headers) {
  const value = headers.get("traceparent");
  return value ? value.split("-")[1] || null : null;
}

function tokenSubject(token) {
  const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
  return JSON.parse(atob(payload)).sub;
}

function setStatus(element, text, error = false) {
  element.textContent = text;
  element.classList.toggle("error", error);
}

// ------------------------------------------------------------- account ----

async function register() {
  const credentials = readCredentials();
  if (!credentials) return;
  setStatus($("#auth-status"), "registering…");
  try {
    await api("POST", "/api/auth/register", credentials);
  } catch (error) {
    // Registered before: logging in is what the visitor wants.
    if (error.code !== "conflict") return setStatus($("#auth-status"), error.message, true);
  }
  await login(credentials);
}

async function login(credentials = readCredentials()) {
  if (!credentials) return;
  setStatus($("#auth-status"), "logging in…");
  try {
    const { json } = await api("POST", "/api/auth/login", credentials);
    startSession(json, credentials.email);
  } catch (error) {
    setStatus($("#auth-status"), error.message, true);
  }
}

function readCredentials() {
  const email = $("#email").value.trim();
  const password = $("#password").value;
  if (!email || !password) {
    setStatus($("#auth-status"), "enter an email and a password (8 characters or more)", true);
    return null;
  }
  return { email, password };
}

function startSession(tokens, email) {
  state.tokens = tokens;
  state.user = { id: tokenSubject(tokens.access_token), email };
  sessionStorage.setItem("signalbox.session", JSON.stringify({ tokens, email }));
  $("#auth-form").hidden = true;
  $("#session").hidden = false;
  $("#who").textContent = email;
  setStatus($("#auth-status"), "");
  renderProducts();
  loadOrders();
  state.wantSocket = true;
  connect();
}

async function logout() {
  state.wantSocket = false;
  if (state.socket) state.socket.close(1000, "logout");
  try {
    await api("POST", "/api/auth/logout", { refresh_token: state.tokens.refresh_token });
  } catch (_) { /* the session ends here either way */ }
  sessionStorage.removeItem("signalbox.session");
  location.reload();
}

// Rotates the refresh token for a new access token (RFC 6749 §6).
async function refreshTokens() {
  const { json } = await api("POST", "/oauth/token", {
    grant_type: "refresh_token",
    refresh_token: state.tokens.refresh_token,
  }, { form: true });
  state.tokens = { ...state.tokens, ...json };
  sessionStorage.setItem("signalbox.session", JSON.stringify({ tokens: state.tokens, email: state.user.email }));
  return json.access_token;
}

// ------------------------------------------------------------- catalog ----

async function loadProducts() {
  try {
    const { json } = await api("GET", "/api/catalog/products");
    state.products = new Map(json.products.map((p) => [p.id, p]));
    setStatus($("#catalog-status"), json.stale ? "catalog is unavailable: showing its last good answer" : "");
    renderProducts();
  } catch (error) {
    setStatus($("#catalog-status"), error.message, true);
  }
}

function money(cents, currency) {
  return `${(cents / 100).toFixed(2)} ${currency}`;
}

function renderProducts() {
  const body = $("#products tbody");
  body.replaceChildren();
  for (const product of state.products.values()) {
    const row = document.createElement("tr");
    row.className = "product";
    row.dataset.productId = product.id;
    row.innerHTML = `<td></td><td></td><td class="stock"></td>
      <td><input type="number" min="1" value="1" aria-label="quantity"></td>
      <td><button type="button" class="order">Order</button></td>`;
    row.cells[0].textContent = product.name;
    row.cells[1].textContent = money(product.price_cents, product.currency);
    row.cells[2].textContent = product.stock;
    const button = row.querySelector("button");
    button.disabled = !state.tokens;
    button.title = state.tokens ? "" : "log in first";
    button.addEventListener("click", () => placeOrder(product, Number(row.querySelector("input").value)));
    body.append(row);
  }
}

// -------------------------------------------------------------- orders ----

async function loadOrders() {
  try {
    const { json } = await api("GET", "/api/orders", undefined, { auth: true });
    for (const order of json.orders.reverse()) {
      upsertOrder(order.id, { state: order.state, total: money(order.total_cents, order.currency) });
    }
  } catch (error) {
    setStatus($("#catalog-status"), `orders: ${error.message}`, true);
  }
}

async function placeOrder(product, quantity) {
  setStatus($("#catalog-status"), `placing an order for ${quantity} × ${product.name}…`);
  resetHops();
  lightHop("browser");
  try {
    const { json, headers } = await api(
      "POST", "/api/orders",
      { items: [{ product_id: product.id, quantity }] },
      { auth: true },
    );
    // 202: the order exists (PENDING) in orders' database, with its outbox
    // rows; the saga decides it later and the socket tells us.
    lightHop("gateway");
    lightHop("orders");
    state.current = json.order_id;
    $("#flow-order").textContent = json.order_id;
    const trace = traceId(headers);
    $("#flow-trace").textContent = trace || "– (no traceparent on the response)";
    // The socket may have pushed this order's events before this answer
    // arrived: a state it already showed stays.
    const known = state.orders.get(json.order_id);
    upsertOrder(json.order_id, {
      state: known ? known.state : json.state,
      total: money(product.price_cents * quantity, product.currency),
      trace,
    });
    setStatus($("#catalog-status"), `order ${json.order_id.slice(0, 8)} is ${json.state}`);
  } catch (error) {
    setStatus($("#catalog-status"), error.message, true);
  }
}

async function cancelOrder(id) {
  try {
    const { json } = await api("POST", `/api/orders/${id}/cancel`, undefined, { auth: true });
    upsertOrder(id, { state: json.state });
  } catch (error) {
    setStatus($("#catalog-status"), error.message, true);
  }
}

function upsertOrder(id, changes) {
  const order = state.orders.get(id) || { state: "PENDING", total: "", events: [] };
  Object.assign(order, changes);
  state.orders.set(id, order);
  let row = document.querySelector(`#order-table tr[data-order-id="${id}"]`);
  if (!row) {
    row = document.createElement("tr");
    row.dataset.orderId = id;
    row.innerHTML = `<td class="id"></td><td class="state"></td><td class="total"></td>
      <td class="events"></td><td><button type="button" class="secondary cancel">Cancel</button></td>`;
    row.cells[0].textContent = id.slice(0, 8);
    row.cells[0].title = id;
    row.querySelector(".cancel").addEventListener("click", () => cancelOrder(id));
    $("#order-table tbody").prepend(row);
  }
  const cell = row.querySelector(".state");
  cell.textContent = order.state;
  cell.className = `state ${order.state}`;
  row.querySelector(".total").textContent = order.total;
  row.querySelector(".events").textContent = order.events.join("  ");
  row.querySelector(".cancel").disabled = !["PENDING", "APPROVED"].includes(order.state);
}

// ---------------------------------------------------------------- hops ----

function resetHops() {
  for (const hop of document.querySelectorAll(".hop")) hop.classList.remove("lit", "ok", "bad");
  $("#hop-realtime").textContent = "pushes on user channel";
  $("#hop-page").textContent = "state shown";
}

function lightHop(name, tone) {
  const hop = document.querySelector(`.hop[data-hop="${name}"]`);
  hop.classList.add("lit");
  if (tone) hop.classList.add(tone);
}

// An event pushed for one of our orders: what it proves has happened.
function showEvent(data, offset) {
  const id = data.order_id;
  if (!id) return;
  const instance = instanceName(state.socketUrl);
  if (!state.orders.has(id)) state.orders.set(id, { state: "PENDING", total: "", events: [] });
  const order = state.orders.get(id);
  order.events.push(`${data.type} · ${instance} · #${offset}`);
  upsertOrder(id, { state: data.state || order.state });
  if (state.current && state.current !== id) return;
  state.current = id;
  $("#flow-order").textContent = id;
  // The relay published from orders' outbox, the broker carried it to
  // every realtime instance, and the one holding this socket pushed it.
  lightHop("browser"); lightHop("gateway"); lightHop("orders"); lightHop("broker");
  lightHop("realtime");
  $("#hop-realtime").textContent = `pushed by ${instance}`;
  if (data.type === "order.approved" || data.type === "order.rejected") {
    const tone = data.type === "order.approved" ? "ok" : "bad";
    lightHop("catalog", tone);
    lightHop("decision", tone);
    // Catalog reserved (or refused) stock: show what is left, then the
    // outcome (loading the list clears the status line).
    const outcome = `order ${id.slice(0, 8)} is ${data.state}${data.reason ? `: ${data.reason}` : ""}`;
    loadProducts().then(() => setStatus($("#catalog-status"), outcome));
  }
  lightHop("page", data.state === "REJECTED" || data.state === "CANCELLED" ? "bad" : data.state === "APPROVED" ? "ok" : undefined);
  $("#hop-page").textContent = data.state || data.type;
}

function instanceName(url) {
  try {
    const parsed = new URL(url);
    return `${parsed.hostname}:${parsed.port}`;
  } catch (_) {
    return url || "?";
  }
}

// -------------------------------------------------------------- socket ----

function socketUrls() {
  const urls = (state.config && state.config.realtime.urls) || [];
  return urls.map((url) => url.replace("{host}", location.hostname));
}

function setSocket(text, tone) {
  $("#socket-status").textContent = text;
  $("#socket-dot").className = `dot ${tone}`;
}

function log(direction, frame) {
  const item = document.createElement("li");
  item.className = direction;
  item.textContent = `${direction === "in" ? "←" : "→"} ${frame}`;
  const list = $("#log");
  list.prepend(item);
  while (list.children.length > 200) list.lastChild.remove();
}

function send(frame) {
  const text = JSON.stringify(frame);
  // The token is a credential: never shown, not even on this page.
  log("out", text.replace(/"token":"[^"]+"/, '"token":"…"'));
  state.socket.send(text);
}

// Opens the socket on the next instance; recovers from the last position.
function connect() {
  clearTimeout(state.retryTimer);
  const urls = socketUrls();
  if (!urls.length) return setSocket("no realtime URL configured (page.realtime_urls)", "off");
  const url = urls[state.socketIndex % urls.length];
  state.socketUrl = url;
  state.subscribed = false;
  $("#socket-url").textContent = url;
  setSocket("connecting…", "wait");
  const socket = new WebSocket(url, state.config.realtime.subprotocol);
  state.socket = socket;
  // Browsers cannot set headers on a WebSocket: the first frame authenticates.
  socket.addEventListener("open", () => send({ type: "auth", token: state.tokens.access_token }));
  socket.addEventListener("message", (message) => {
    log("in", message.data);
    onFrame(JSON.parse(message.data));
  });
  socket.addEventListener("close", (event) => {
    if (state.socket !== socket) return;
    $("#reconnect").disabled = true;
    setSocket(`closed (${event.code}${event.reason ? ` ${event.reason}` : ""})`, "off");
    if (!state.wantSocket) return;
    // Reconnect to the next instance, backing off; the events missed in
    // between are recovered on subscribe.
    state.socketIndex += 1;
    state.reconnects += 1;
    $("#socket-reconnects").textContent = state.reconnects;
    const delay = Math.min(10000, 500 * 2 ** Math.min(state.reconnects, 5));
    state.retryTimer = setTimeout(() => reconnectWithToken(event.code), delay);
  });
}

async function reconnectWithToken(code) {
  if (code === 4001 || code === 1008) {
    // Expired or refused token: a fresh one first.
    try { await refreshTokens(); } catch (error) { return setSocket(`cannot refresh the token: ${error.message}`, "off"); }
  }
  connect();
}

function onFrame(frame) {
  switch (frame.type) {
    case "welcome":
      setSocket(`authenticated (token valid ${frame.ttl} s)`, "on");
      if (!state.subscribed) {
        const subscribe = { type: "subscribe", channel: `user:${state.user.id}` };
        if (state.position) subscribe.recover = state.position;
        send(subscribe);
      }
      break;
    case "subscribed":
      state.subscribed = true;
      $("#reconnect").disabled = false;
      setSocket(`subscribed to ${frame.channel}`, "on");
      $("#socket-recovered").textContent = state.position
        ? `recovered: ${frame.recovered}${frame.recovered ? " (missed events replayed)" : " (position unknown or too old)"}`
        : "fresh (nothing to recover)";
      if (!state.position || !frame.recovered) state.position = { epoch: frame.epoch, offset: frame.offset };
      showPosition();
      break;
    case "event":
      state.position = { epoch: frame.epoch, offset: frame.offset };
      showPosition();
      showEvent(frame.data, frame.offset);
      break;
    case "token_expiring":
      refreshTokens()
        .then((token) => send({ type: "refresh", token }))
        .catch((error) => setSocket(`token refresh failed: ${error.message}`, "wait"));
      break;
    case "error":
      setSocket(`error ${frame.code}: ${frame.message}`, "wait");
      break;
    default:
      break;
  }
}

function showPosition() {
  $("#socket-position").textContent = state.position
    ? `epoch ${state.position.epoch.slice(0, 8)} · offset ${state.position.offset}`
    : "–";
}

// ---------------------------------------------------------------- start ----

async function start() {
  $("#register").addEventListener("click", register);
  $("#auth-form").addEventListener("submit", (event) => { event.preventDefault(); login(); });
  $("#logout").addEventListener("click", logout);
  $("#reconnect").addEventListener("click", () => {
    // Leave this instance on purpose: the close handler moves to the next
    // one and subscribes with `recover`.
    if (state.socket) state.socket.close(1000, "reconnect");
  });
  try {
    state.config = (await api("GET", "/api/config")).json;
  } catch (error) {
    setSocket(`no page settings: ${error.message}`, "off");
  }
  state.socketIndex = Math.floor(Math.random() * Math.max(1, socketUrls().length));
  await loadProducts();
  const saved = sessionStorage.getItem("signalbox.session");
  if (saved) {
    const { tokens, email } = JSON.parse(saved);
    startSession(tokens, email);
  }
}

start();
