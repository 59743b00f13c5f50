// Toolbar popup: this tab's counts, "describe now", on/off for this site, hide/show the
// descriptions, and a way to the options. Opening the popup grants activeTab, which is what
// lets "describe now" run on a page AltCap has no standing access to.
//
// Tests may open popup.html?tabId=N in a tab of its own to act on tab N.

import { hostPattern, loadSettings, normalizeHost, saveSettings, siteRule, withSite } from "./settings.js";

const $ = (id) => document.getElementById(id);
let tabId = null;
let host = ""; // the page's host, "" when it is not a web page
let settings = null;

function say(text) {
  $("status").textContent = "";
  setTimeout(() => {
    $("status").textContent = text;
  }, 50);
}

async function findTab() {
  const wanted = Number(new URLSearchParams(location.search).get("tabId"));
  if (Number.isInteger(wanted) && wanted >= 0) {
    try {
      return await chrome.tabs.get(wanted);
    } catch {
      return { id: wanted };
    }
  }
  const [tab] = await chrome.tabs.query({ active: true, currentWindow: true });
  return tab;
}

/** The page's counts, all its frames added up (the service worker asks each frame). */
async function pageStatus() {
  try {
    const answer = await chrome.runtime.sendMessage({ type: "tab-status", tabId });
    return answer && answer.ok ? answer : null;
  } catch {
    return null; // no content script on this page (yet)
  }
}

async function render() {
  const st = await pageStatus();
  for (const key of ["found", "described", "unsure", "failed", "suspect"]) {
    $(key).textContent = st ? String(st[key] ?? 0) : "–";
  }
  // Authors' alts noted as possibly not matching: counted only with the opt-in check on.
  $("suspect-row").hidden = !settings.checkAlt;
  let text;
  if (!settings.consented) text = "AltCap sends nothing until you agree to its privacy notice in the options.";
  else if (!st) text = host ? "AltCap has not looked at this page yet." : "AltCap cannot describe images on this page.";
  else if (!st.showing) text = "AltCap's descriptions are hidden on this page.";
  else if (st.running) text = "AltCap is describing images on this page.";
  else text = "AltCap is off on this page.";
  $("page-state").textContent = text;
  $("toggle-captions").textContent = st && !st.showing ? "Show AltCap's descriptions here" : "Hide AltCap's descriptions here";
  $("toggle-captions").disabled = !st;
}

$("describe-now").addEventListener("click", async () => {
  say("Describing…");
  try {
    const answer = await chrome.runtime.sendMessage({ type: "describe-tab", tabId });
    if (answer && answer.error) say(answer.error.message);
    else if (answer && answer.ok) {
      say(`${answer.found} ${answer.found === 1 ? "image needs" : "images need"} a description; ${answer.described} done so far.`);
    }
    else say("The page did not answer.");
  } catch (e) {
    say(`Could not describe: ${e.message || e}`);
  }
  render();
});

$("site-toggle").addEventListener("change", () => {
  const on = $("site-toggle").checked;
  // Ask for access first, inside the click's user gesture (Firefox requires it).
  let access = Promise.resolve(true);
  if (on) {
    try {
      access = chrome.permissions.request({ origins: [hostPattern(host)] });
    } catch (e) {
      access = Promise.resolve(false);
    }
  }
  // Save without waiting for the answer: Firefox may close the popup while it asks, and the
  // service worker re-registers the content script once the permission arrives.
  const saved = saveSettings(withSite(settings, host, on));
  Promise.all([access.catch(() => false), saved])
    .then(async ([granted]) => {
      settings = await loadSettings();
      if (!on) {
        await chrome.runtime.sendMessage({ type: "tab-restore", tabId }).catch(() => null);
        say(`AltCap is off on ${host}; the page's own text is back.`);
      } else if (granted) {
        await chrome.runtime.sendMessage({ type: "sync" }).catch(() => null);
        say(`AltCap describes images on ${host} automatically from the next visit.`);
      } else {
        say(`Access to ${host} was not granted: use "Describe images on this page now" there.`);
      }
      render();
    })
    .catch((e) => say(`Could not save: ${e.message || e}`));
});

$("toggle-captions").addEventListener("click", async () => {
  try {
    // Through the service worker, which switches every frame of the page the same way.
    const answer = await chrome.runtime.sendMessage({ type: "tab-toggle", tabId });
    if (!answer || !answer.ok) say("AltCap is not running on this page.");
    else say(answer.showing ? "AltCap's descriptions are shown." : "The page's own text is back.");
  } catch {
    say("AltCap is not running on this page.");
  }
  render();
});

$("open-options").addEventListener("click", () => {
  chrome.runtime.openOptionsPage();
  window.close();
});

async function init() {
  try {
    settings = await loadSettings();
    const tab = await findTab();
    tabId = tab && typeof tab.id === "number" ? tab.id : null;
    let pageOrigin = "";
    try {
      const url = new URL(tab.url);
      if (url.protocol === "http:" || url.protocol === "https:") {
        host = normalizeHost(url.hostname) || "";
        pageOrigin = `${url.protocol}//${url.hostname}/*`;
      }
    } catch {
      host = "";
    }
    if (host) {
      // "On" means AltCap describes this site by itself: an "always" site, or automatic mode
      // with access to it; never for a "never" site.
      const rule = siteRule(settings, host);
      const access = await chrome.permissions.contains({ origins: [pageOrigin] }).catch(() => false);
      $("site-name").textContent = host;
      $("site-toggle").checked = rule === "always" || (rule !== "never" && settings.mode === "auto" && access);
    } else {
      $("site-choice").hidden = true;
    }
    $("describe-now").disabled = tabId === null;
    await render();
    setInterval(() => render().catch(() => {}), 1000); // counts change while captions arrive
  } catch (e) {
    say(`AltCap could not read this tab: ${e.message || e}`);
  }
}

init();
