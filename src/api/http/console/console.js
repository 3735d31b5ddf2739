// The batchreg console. Reads /console/v1/summary and the read API (/naming/v1/services,
// /naming/v1/instances) and redraws every REFRESH_MS. Whatever the server sends is
// written with textContent, never parsed as HTML.
"use strict";

const REFRESH_MS = 3000;
/** The read API's largest page. */
const PAGE_SIZE = 100;
const TOKEN_KEY = "batchreg.token";
const SUCCESS = 200000;

/** What the page shows: the services list, or one service's instances. */
const view = {
  namespace: "",
  servicesOffset: 0,
  /** `{namespace, name}` while a service is open, from the location's hash. */
  service: null,
  instancesOffset: 0,
  /** "", "true" or "false": the instances' `healthy` filter. */
  health: "",
};
/** The last summary: rates are the totals' growth since it. */
let previous = null;
/** Sent as X-Polaris-Token when not empty; kept in localStorage. */
let token = storedToken();
let refreshing = false;
let refreshAgain = false;

/** A refusal or an unreachable server: shown on the page. Anything else is a bug. */
class Problem extends Error {}

const byId = (id) => document.getElementById(id);

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function storedToken() {
  try {
    return localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    return "";
  }
}

/** GETs a JSON answer of this server; a Polaris code other than 200000 is a Problem. */
async function read(path) {
  const headers = { Accept: "application/json" };
  if (token) headers["X-Polaris-Token"] = token;
  let response;
  try {
    response = await fetch(path, { headers, cache: "no-store" });
  } catch (error) {
    throw new Problem(`cannot reach the server (${error.message})`);
  }
  const type = response.headers.get("Content-Type") || "";
  if (!type.startsWith("application/json")) {
    const text = (await response.text()).trim();
    throw new Problem(`HTTP ${response.status}: ${text}`);
  }
  const body = await response.json();
  if (body.code !== undefined && body.code !== SUCCESS) {
    throw new Problem(`${body.code}: ${body.info}`);
  }
  return body;
}

function count(n) {
  return Number(n ?? 0).toLocaleString("en-US");
}

function rate(perSecond) {
  if (perSecond < 10) return perSecond.toFixed(1);
  return Math.round(perSecond).toLocaleString("en-US");
}

function uptime(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return `up ${s} s`;
  if (s < 3600) return `up ${Math.floor(s / 60)} min`;
  if (s < 86400) return `up ${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `up ${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function showSummary(summary) {
  byId("stat-services").textContent = count(summary.services);
  byId("stat-instances").textContent = count(summary.instances);
  byId("stat-healthy").textContent = count(summary.healthy);
  byId("uptime").textContent = uptime(summary.uptime_seconds);
  byId("token-form").hidden = !summary.auth;
  const seconds = previous ? summary.uptime_seconds - previous.uptime_seconds : 0;
  // A restarted server (uptime went back) starts its totals again: wait for the next.
  if (seconds > 0) {
    for (const [id, key] of [
      ["rate-registrations", "registrations_total"],
      ["rate-heartbeats", "heartbeats_total"],
      ["rate-discovers", "discovers_total"],
    ]) {
      byId(id).textContent = rate(Math.max(0, summary[key] - previous[key]) / seconds);
    }
  }
  previous = summary;
  showNamespaces(summary.namespaces);
}

function showNamespaces(namespaces) {
  const select = byId("namespace");
  const options = [element("option", "All namespaces")];
  options[0].value = "";
  const names = namespaces.map((ns) => ns.name);
  if (view.namespace && !names.includes(view.namespace)) {
    namespaces = namespaces.concat([{ name: view.namespace, services: 0 }]);
  }
  for (const ns of namespaces) {
    const option = element("option", `${ns.name} (${count(ns.services)})`);
    option.value = ns.name;
    options.push(option);
  }
  select.replaceChildren(...options);
  select.value = view.namespace;
}

function showPager(id, offset, size, amount) {
  const pager = byId(id);
  pager.querySelector(".range").textContent =
    amount === 0 ? "none" : `${count(offset + 1)}–${count(offset + size)} of ${count(amount)}`;
  pager.querySelector('[data-step="-1"]').disabled = offset === 0;
  pager.querySelector('[data-step="1"]').disabled = offset + size >= amount;
}

function emptyRow(columns, text) {
  const cell = element("td", text, "empty");
  cell.colSpan = columns;
  const row = element("tr");
  row.append(cell);
  return row;
}

function serviceHash(namespace, name) {
  return `#service/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`;
}

function serviceRow(service) {
  const total = service.total_instance_count ?? 0;
  const healthy = service.healthy_instance_count ?? 0;
  const hash = serviceHash(service.namespace, service.name);
  const row = element("tr");
  row.dataset.service = `${service.namespace}/${service.name}`;
  const link = element("a", service.name);
  link.href = hash;
  const nameCell = element("td");
  nameCell.append(link);
  const revision = element("td", (service.revision || "").slice(0, 12), "mono");
  revision.title = service.revision || "";
  row.append(
    element("td", service.namespace),
    nameCell,
    element("td", count(total), "num total"),
    element("td", count(healthy), healthy < total ? "num healthy count-bad" : "num healthy"),
    element("td", count(service.isolate_instance_count), "num isolated"),
    revision,
    element("td", service.mtime || ""),
  );
  row.addEventListener("click", () => {
    location.hash = hash;
  });
  return row;
}

async function showServices() {
  const query = new URLSearchParams({ offset: view.servicesOffset, limit: PAGE_SIZE });
  if (view.namespace) query.set("namespace", view.namespace);
  const page = await read(`/naming/v1/services?${query}`);
  if (page.size === 0 && view.servicesOffset > 0) {
    // The list shrank under this page: show its last page.
    view.servicesOffset = Math.max(0, Math.floor((page.amount - 1) / PAGE_SIZE) * PAGE_SIZE);
    return showServices();
  }
  const rows = page.services.map(serviceRow);
  byId("services").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(7, "No services")]));
  showPager("services-pager", view.servicesOffset, page.size, page.amount);
}

function badge(text, kind) {
  return element("span", text, `badge ${kind}`);
}

function instanceRow(instance) {
  const row = element("tr");
  row.dataset.instance = instance.id || "";
  const health = element("td");
  health.append(instance.healthy ? badge("healthy", "good") : badge("unhealthy", "bad"));
  const isolate = element("td");
  isolate.append(instance.isolate ? badge("isolated", "warn") : element("span", "–", "muted"));
  const metadata = element("td");
  const entries = Object.entries(instance.metadata || {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  for (const [key, value] of entries) metadata.append(element("span", `${key}=${value}`, "meta"));
  row.append(
    element("td", instance.host, "mono host"),
    element("td", instance.port, "num port"),
    health,
    isolate,
    element("td", instance.weight, "num weight"),
    metadata,
    element("td", instance.mtime || ""),
  );
  return row;
}

async function showInstances() {
  const { namespace, name } = view.service;
  byId("instances-title").textContent = `${namespace} / ${name}`;
  byId("health").value = view.health;
  const query = new URLSearchParams({
    namespace,
    service: name,
    offset: view.instancesOffset,
    limit: PAGE_SIZE,
  });
  if (view.health) query.set("healthy", view.health);
  const page = await read(`/naming/v1/instances?${query}`);
  if (page.size === 0 && view.instancesOffset > 0) {
    view.instancesOffset = Math.max(0, Math.floor((page.amount - 1) / PAGE_SIZE) * PAGE_SIZE);
    return showInstances();
  }
  const rows = page.instances.map(instanceRow);
  byId("instances").tBodies[0].replaceChildren(...(rows.length ? rows : [emptyRow(7, "No instances")]));
  showPager("instances-pager", view.instancesOffset, page.size, page.amount);
}

function showProblem(text) {
  const problem = byId("problem");
  problem.hidden = !text;
  problem.textContent = text || "";
}

/** Reads everything the current view shows; one refresh at a time. */
async function refresh() {
  if (refreshing) {
    refreshAgain = true;
    return;
  }
  refreshing = true;
  try {
    showSummary(await read("/console/v1/summary"));
    if (view.service) {
      await showInstances();
    } else {
      await showServices();
    }
    showProblem(null);
  } catch (error) {
    showProblem(error.message);
    if (!(error instanceof Problem)) throw error;
  } finally {
    refreshing = false;
  }
  if (refreshAgain) {
    refreshAgain = false;
    await refresh();
  }
}

/** The view the location's hash names: `#service/<namespace>/<name>`, else the list. */
function route() {
  const parts = location.hash.slice(1).split("/");
  let service = null;
  if (parts.length === 3 && parts[0] === "service") {
    try {
      service = { namespace: decodeURIComponent(parts[1]), name: decodeURIComponent(parts[2]) };
    } catch {
      service = null;
    }
  }
  const same =
    service && view.service && service.namespace === view.service.namespace && service.name === view.service.name;
  if (!same) {
    view.instancesOffset = 0;
    view.health = "";
  }
  view.service = service;
  byId("services-view").hidden = service !== null;
  byId("instances-view").hidden = service === null;
  refresh();
}

function page(offsetKey) {
  return (event) => {
    const step = Number(event.target.dataset.step || 0);
    if (!step) return;
    view[offsetKey] = Math.max(0, view[offsetKey] + step * PAGE_SIZE);
    refresh();
  };
}

function start() {
  byId("refresh-seconds").textContent = String(REFRESH_MS / 1000);
  byId("token").value = token;
  byId("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    token = byId("token").value.trim();
    try {
      localStorage.setItem(TOKEN_KEY, token);
    } catch {
      // Private windows may refuse storage: the token then lasts until the page closes.
    }
    refresh();
  });
  byId("namespace").addEventListener("change", (event) => {
    view.namespace = event.target.value;
    view.servicesOffset = 0;
    refresh();
  });
  byId("health").addEventListener("change", (event) => {
    view.health = event.target.value;
    view.instancesOffset = 0;
    refresh();
  });
  byId("services-pager").addEventListener("click", page("servicesOffset"));
  byId("instances-pager").addEventListener("click", page("instancesOffset"));
  window.addEventListener("hashchange", route);
  setInterval(refresh, REFRESH_MS);
  route();
}

start();
