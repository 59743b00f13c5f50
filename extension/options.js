// Options page: server, API key, prefixes, reading text in images, mode, site lists, privacy
// switches, the opt-in check of authors' alt text and the consent.
//
// Browsers grant host permissions only from a user gesture, and Firefox only when
// chrome.permissions.request() is called before anything is awaited in the click handler.
// So every handler below reads the form synchronously, calls request() first, and awaits
// afterwards.

import {
  DEFAULTS,
  coversAllSites,
  hostPattern,
  isPlainHttpElsewhere,
  loadSettings,
  normalizeServerUrl,
  originPattern,
  parseHostList,
  saveSettings,
} from "./settings.js";

const $ = (id) => document.getElementById(id);
const form = $("settings");
const statusBox = $("status");

function say(text) {
  // Cleared first so that the same message twice is announced twice.
  statusBox.textContent = "";
  setTimeout(() => {
    statusBox.textContent = text;
  }, 50);
}

function showError(field, errorBox, message) {
  const input = $(field);
  const box = $(errorBox);
  if (message) {
    input.setAttribute("aria-invalid", "true");
    box.textContent = message;
    box.hidden = false;
  } else {
    input.removeAttribute("aria-invalid");
    box.textContent = "";
    box.hidden = true;
  }
}

/** The form as settings, or {errors} (focus goes to the first bad field). Synchronous. */
function readForm() {
  const serverUrl = normalizeServerUrl($("server-url").value);
  const always = parseHostList($("sites-always").value);
  const never = parseHostList($("sites-never").value);
  showError("server-url", "server-url-error", serverUrl ? "" : "Enter an http:// or https:// address, for example http://127.0.0.1:8000.");
  showError("sites-always", "sites-always-error", always.invalid.length ? `Not a site: ${always.invalid.join(", ")}.` : "");
  showError("sites-never", "sites-never-error", never.invalid.length ? `Not a site: ${never.invalid.join(", ")}.` : "");
  const bad = [
    [!serverUrl, "server-url"],
    [always.invalid.length, "sites-always"],
    [never.invalid.length, "sites-never"],
  ].find(([isBad]) => isBad);
  if (bad) {
    $(bad[1]).focus();
    return { errors: true };
  }
  return {
    values: {
      serverUrl,
      apiKey: $("api-key").value.trim(),
      prefix: $("prefix").value.slice(0, 80),
      textPrefix: $("text-prefix").value.slice(0, 80),
      mode: $("mode-on-demand").checked ? "on-demand" : "auto",
      sitesAlways: always.hosts,
      sitesNever: never.hosts,
      allowBytes: $("allow-bytes").checked,
      allowIncognito: $("allow-incognito").checked,
      checkAlt: $("check-alt").checked,
      readText: $("read-text").checked,
    },
  };
}

/** Ask for access to the given hosts' pages. Must run before any await in a click handler.
 * Resolves to true (granted, or nothing to ask), false (refused) or an error string. */
function requestHosts(hosts) {
  if (!hosts.length) return Promise.resolve(true);
  try {
    return chrome.permissions.request({ origins: hosts.map(hostPattern) }).catch((e) => String(e.message || e));
  } catch (e) {
    return Promise.resolve(String(e.message || e));
  }
}

/** The warning under the server address: shown for plain http:// to another computer. */
function warnIfPlain() {
  $("server-url-warning").hidden = !isPlainHttpElsewhere($("server-url").value.trim());
}

function fill(settings) {
  $("server-url").value = settings.serverUrl;
  warnIfPlain();
  $("api-key").value = settings.apiKey || "";
  $("prefix").value = settings.prefix;
  $("text-prefix").value = settings.textPrefix;
  $("mode-auto").checked = settings.mode === "auto";
  $("mode-on-demand").checked = settings.mode === "on-demand";
  $("sites-always").value = settings.sitesAlways.join("\n");
  $("sites-never").value = settings.sitesNever.join("\n");
  $("allow-bytes").checked = settings.allowBytes;
  $("allow-incognito").checked = settings.allowIncognito;
  $("check-alt").checked = settings.checkAlt;
  $("read-text").checked = settings.readText;
  renderConsent(settings);
}

function renderConsent(settings) {
  $("consent-server").textContent = normalizeServerUrl($("server-url").value) || settings.serverUrl;
  $("consent-state").textContent = settings.consented
    ? `You agreed: AltCap sends images to ${settings.serverUrl}.`
    : "You have not agreed yet: AltCap sends nothing.";
  $("withdraw").disabled = !settings.consented;
}

async function renderSiteAccess(registration) {
  let origins = [];
  try {
    origins = (await chrome.permissions.getAll()).origins || [];
  } catch {
    // leave empty
  }
  const web = origins.filter((o) => /^(\*|https?):\/\//.test(o));
  let text;
  if (coversAllSites(origins)) text = "AltCap may access all websites.";
  else if (web.length) text = `AltCap may access: ${web.join(", ")}.`;
  else text = "AltCap may not access any website by itself; the shortcut, toolbar button and context menu still work on the page you are on.";
  if (registration && Array.isArray(registration.matches)) {
    text += registration.matches.length
      ? ` It describes images automatically on: ${registration.matches.join(", ")}.`
      : " It describes images automatically nowhere yet.";
    if (registration.error) text += ` (The browser refused: ${registration.error}.)`;
  }
  $("site-access").textContent = text;
}

async function syncWorker() {
  try {
    return await chrome.runtime.sendMessage({ type: "sync" });
  } catch {
    return null;
  }
}

/** Save the form. consent: true ("I agree") or undefined (Save). */
function save(consent) {
  const read = readForm();
  if (read.errors) {
    say("Not saved: please correct the marked field.");
    return;
  }
  const { values } = read;
  const access = requestHosts(values.sitesAlways); // first: it needs the click's user gesture
  finishSave(values, consent, access).catch((e) => say(`Not saved: ${e.message || e}`));
}

async function finishSave(values, consent, access) {
  const before = await loadSettings();
  const changes = { ...values };
  const notes = [];
  if (consent === true) changes.consented = true;
  else if (before.consented && values.serverUrl !== before.serverUrl) {
    // Consent was given for one server; another one must be agreed to again.
    changes.consented = false;
    notes.push("The server address changed, so AltCap stopped sending images: read the notice and agree again.");
  }
  const saved = await saveSettings(changes);
  if (saved.apiKeyKept === "session") {
    notes.push("This browser gives AltCap no private place to keep the API key: it is kept until the browser closes.");
  }
  const granted = await access;
  if (granted === false) notes.push('Access to the "always" sites was not granted; AltCap describes them only when you ask.');
  else if (typeof granted === "string") notes.push(`Access to the "always" sites could not be requested: ${granted}.`);
  const after = await loadSettings();
  renderConsent(after);
  const registration = await syncWorker();
  await renderSiteAccess(registration);
  let lead = "Saved.";
  if (consent === true) lead = `Saved. Thank you: AltCap now describes images with ${after.serverUrl}.`;
  say([lead, ...notes].join(" "));
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  save(undefined);
});
$("agree").addEventListener("click", () => save(true));
$("withdraw").addEventListener("click", async () => {
  try {
    await saveSettings({ consented: false });
    renderConsent(await loadSettings());
    await renderSiteAccess(await syncWorker());
    say("Consent withdrawn: AltCap sends nothing any more.");
  } catch (e) {
    say(`Could not withdraw: ${e.message || e}`);
  }
});
$("server-url").addEventListener("input", () => {
  $("consent-server").textContent = normalizeServerUrl($("server-url").value) || $("server-url").value;
  warnIfPlain();
});

$("allow-server").addEventListener("click", () => {
  const serverUrl = normalizeServerUrl($("server-url").value);
  if (!serverUrl) {
    showError("server-url", "server-url-error", "Enter an http:// or https:// address first.");
    $("server-url").focus();
    return;
  }
  let request;
  try {
    request = chrome.permissions.request({ origins: [originPattern(serverUrl)] });
  } catch (e) {
    request = Promise.reject(e);
  }
  request.then(
    (ok) => say(ok ? `AltCap may now reach ${serverUrl}.` : "Access to the server was not granted."),
    (e) => say(`Could not ask for access: ${e.message || e}`),
  );
});

$("allow-all-sites").addEventListener("click", () => {
  let request;
  try {
    request = chrome.permissions.request({ origins: ["<all_urls>"] });
  } catch (e) {
    request = Promise.reject(e);
  }
  request
    .then(async (ok) => {
      await renderSiteAccess(await syncWorker());
      say(ok ? "AltCap may now access all websites." : "Access to all websites was not granted.");
    })
    .catch((e) => say(`Could not ask for access: ${e.message || e}`));
});

$("remove-all-sites").addEventListener("click", async () => {
  try {
    // Host permissions from the manifest itself (a test build may add some) cannot be removed.
    const required = new Set(chrome.runtime.getManifest().host_permissions || []);
    const origins = ((await chrome.permissions.getAll()).origins || []).filter((o) => !required.has(o));
    const removed = origins.length ? await chrome.permissions.remove({ origins }) : true;
    await renderSiteAccess(await syncWorker());
    say(removed ? "AltCap no longer has access to any website." : "The browser kept some access (granted at install).");
  } catch (e) {
    say(`Could not remove access: ${e.message || e}`);
  }
});

$("check-server").addEventListener("click", async () => {
  say("Checking the server…");
  try {
    const answer = await chrome.runtime.sendMessage({ type: "check-server" });
    say(answer && answer.message ? answer.message : "No answer from AltCap's background page.");
  } catch (e) {
    say(`Could not check: ${e.message || e}`);
  }
});

async function init() {
  try {
    const settings = await loadSettings();
    fill(settings);
    await renderSiteAccess(null);
    const commands = await chrome.commands.getAll();
    const command = commands.find((c) => c.name === "describe-page");
    if (command) $("shortcut").textContent = command.shortcut || "No shortcut set";
  } catch (e) {
    fill({ ...DEFAULTS, apiKey: "" });
    say(`Could not read the settings: ${e.message || e}`);
  }
}

init();
