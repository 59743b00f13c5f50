// content-script.js in a fake page: finds the right images, sends one batch, writes
// "prefix + caption" with data-altcap, toggles back to the exact page, follows DOM changes,
// follows open shadow roots (nested, added later, attached late), keeps a frame in step with
// its tab (hidden, quiet), and never throws when the service worker is gone.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import vm from "node:vm";
import { setTimeout as sleep } from "node:timers/promises";

import { EXTENSION_DIR, FakeDocument, FakeElement, WORDS, ariaImage, img } from "./fake-dom.mjs";

const RUNTIME_ID = "altcap-test";
const code = (name) => fs.readFileSync(path.join(EXTENSION_DIR, name), "utf8");

/** A page with the content script injected. `worker(message)` plays the service worker. */
function page({ elements = [], worker, auto = true, hello = {}, setup, dom, clock, onHello, globals: extra = {}, extensionUrl } = {}) {
  const document = new FakeDocument();
  for (const el of elements) document.add(el);
  if (setup) setup(document);
  const sent = [];
  let onMessage = null;
  const observers = { mutation: [], intersection: [] };
  const chrome = {
    runtime: {
      id: RUNTIME_ID,
      getURL: (p = "") => (extensionUrl || `chrome-extension://${RUNTIME_ID}/`) + p,
      async sendMessage(message) {
        sent.push(message);
        if (message.type === "hello") {
          if (onHello) onHello();
          return { consented: true, enabled: true, auto, prefix: "Appears to be: ", words: WORDS, ...hello };
        }
        return worker ? worker(message) : { ok: true };
      },
      onMessage: { addListener: (fn) => (onMessage = fn) },
    },
    ...(dom ? { dom } : {}), // Chrome's chrome.dom (openOrClosedShadowRoot)
  };
  const globals = clock ? { performance: clock } : {}; // node's own otherwise: none in the page
  const context = vm.createContext({
    ...globals,
    location: { origin: "https://example.com", href: "https://example.com/page.html" },
    URL,
    btoa,
    ...extra,
    chrome,
    document,
    // Unref'd: a page's timers (e.g. a custom element it keeps looking at) must not keep the
    // test process alive after the last test.
    setTimeout: (fn, ms) => setTimeout(fn, ms).unref(),
    clearTimeout,
    getComputedStyle: () => ({ visibility: "visible" }),
    MutationObserver: class {
      constructor(callback) {
        this.callback = callback;
        this.targets = [];
        observers.mutation.push(this);
      }
      observe(target) {
        this.targets.push(target);
      }
      disconnect() {}
    },
    IntersectionObserver: class {
      constructor(callback) {
        this.callback = callback;
        this.targets = [];
        observers.intersection.push(this);
      }
      observe(el) {
        this.targets.push(el);
      }
      disconnect() {}
    },
  });
  context.window = context;
  vm.runInContext(code("detection.js"), context);
  vm.runInContext(code("caption-text.js"), context);
  vm.runInContext(code("page-image.js"), context);
  vm.runInContext(code("content-script.js"), context);

  /** Send a message as the extension would (sender.id = ours unless given). */
  function message(msg, senderId = RUNTIME_ID) {
    return new Promise((resolve) => {
      const async = onMessage(msg, { id: senderId }, resolve);
      if (async !== true) setTimeout(() => resolve(undefined), 0);
    });
  }
  return { document, sent, message, observers, context, inject: () => vm.runInContext(code("content-script.js"), context) };
}

const captionEach = (message) => ({
  results: message.images.map((image) => ({ id: image.id, caption: `A picture of ${image.url.split("/").pop()}.` })),
});

const describes = (sent) => sent.filter((m) => m.type === "describe");

/** Wait until `condition()` holds (a few seconds at most): on a busy machine a fixed sleep can
 * end before the content script's round trips do. */
async function until(condition, timeoutMs = 5000) {
  const end = Date.now() + timeoutMs;
  while (!(await condition()) && Date.now() < end) await sleep(10);
}

test("describes missing and meaningless alts only, in one batch", async () => {
  const none = img({ src: "https://example.com/cat.jpg" });
  const meaningless = img({ src: "https://example.com/dog.jpg", alt: "image" });
  const author = img({ src: "https://example.com/team.jpg", alt: "The team in Lisbon" });
  const decorative = img({ src: "https://example.com/rule.png", alt: "" });
  const tiny = img({ src: "https://example.com/icon.png" }, { rect: { width: 12, height: 12 } });
  const hidden = img({ src: "https://example.com/h.png", "aria-hidden": "true" });
  const p = page({ elements: [none, meaningless, author, decorative, tiny, hidden], worker: captionEach });
  await sleep(120);

  const batches = describes(p.sent);
  assert.equal(batches.length, 1);
  assert.deepEqual(Array.from(batches[0].images, (i) => i.url), ["https://example.com/cat.jpg", "https://example.com/dog.jpg"]);

  assert.equal(none.getAttribute("alt"), "Appears to be: A picture of cat.jpg.");
  assert.equal(none.getAttribute("data-altcap"), "__none__");
  assert.equal(meaningless.getAttribute("alt"), "Appears to be: A picture of dog.jpg.");
  assert.equal(meaningless.getAttribute("data-altcap"), "image");
  for (const el of [author, decorative, tiny, hidden]) assert.equal(el.hasAttribute("data-altcap"), false);
  assert.equal(author.getAttribute("alt"), "The team in Lisbon");

  const status = await p.message({ type: "status" });
  assert.deepEqual({ ...status }, { running: true, showing: true, consented: true, found: 2, described: 2, failed: 0, unsure: 0, suspect: 0 });
  await sleep(450);
  const counts = p.sent.filter((m) => m.type === "counts").at(-1);
  assert.deepEqual({ ...counts }, { type: "counts", found: 2, described: 2, failed: 0, unsure: 0, suspect: 0 });
});

test("the stopwords in hello reach detection: alt=\"the picture\" says nothing", async () => {
  const { stopwords } = JSON.parse(code("meaningless-alt.json"));
  const urls = (p) => describes(p.sent).flatMap((m) => Array.from(m.images, (i) => i.url));
  const withStopwords = img({ src: "https://example.com/harbour.jpg", alt: "the picture" });
  const p = page({ elements: [withStopwords], worker: captionEach, hello: { stopwords } });
  await sleep(120);
  assert.deepEqual(urls(p), ["https://example.com/harbour.jpg"]);
  assert.equal(withStopwords.getAttribute("alt"), "Appears to be: A picture of harbour.jpg.");
  assert.equal(withStopwords.getAttribute("data-altcap"), "the picture");

  // A "hello" without them: only "picture" is a meaningless word, so the alt stays.
  const without = img({ src: "https://example.com/harbour.jpg", alt: "the picture" });
  const q = page({ elements: [without], worker: captionEach });
  await sleep(120);
  assert.deepEqual(urls(q), []);
  assert.equal(without.getAttribute("alt"), "the picture");
});

test("toggle restores the page exactly, and back again without asking twice", async () => {
  const none = img({ src: "https://example.com/cat.jpg" });
  const meaningless = img({ src: "https://example.com/dog.jpg", alt: "IMG_1.JPG" });
  const p = page({ elements: [none, meaningless], worker: captionEach });
  await sleep(120);

  const off = await p.message({ type: "toggle" });
  assert.equal(off.showing, false);
  assert.equal(none.hasAttribute("alt"), false);
  assert.equal(none.hasAttribute("data-altcap"), false);
  assert.equal(meaningless.getAttribute("alt"), "IMG_1.JPG");

  const on = await p.message({ type: "toggle" });
  assert.equal(on.showing, true);
  assert.equal(none.getAttribute("alt"), "Appears to be: A picture of cat.jpg.");
  assert.equal(describes(p.sent).length, 1); // from the page's cache

  const restored = await p.message({ type: "restore" }); // the site was switched off
  assert.equal(none.hasAttribute("alt"), false);
  assert.equal(meaningless.getAttribute("alt"), "IMG_1.JPG");
  assert.equal(restored.running, false);
  assert.equal(restored.described, 0);

  await p.message({ type: "describe-now" }); // asked again: back at once, from the cache
  assert.equal(none.getAttribute("alt"), "Appears to be: A picture of cat.jpg.");
  assert.equal(describes(p.sent).length, 1);
});

test("new images, src changes and author alt changes are followed", async () => {
  const first = img({ src: "https://example.com/a.jpg" });
  const p = page({ elements: [first], worker: captionEach });
  await sleep(120);
  const [mutations] = p.observers.mutation;

  // An image added later (infinite scroll).
  const later = p.document.add(img({ src: "https://example.com/b.jpg" }));
  mutations.callback([{ type: "childList", addedNodes: [later] }]);
  await sleep(120);
  assert.equal(later.getAttribute("alt"), "Appears to be: A picture of b.jpg.");

  // The page swaps the picture: our caption goes, the new one is described once loaded.
  first.setAttribute("src", "https://example.com/c.jpg");
  first.complete = false;
  mutations.callback([{ type: "attributes", target: first, attributeName: "src" }]);
  assert.equal(first.hasAttribute("alt"), false);
  first.complete = true;
  p.document.dispatch("load", first);
  await sleep(120);
  assert.equal(first.getAttribute("alt"), "Appears to be: A picture of c.jpg.");

  // The author writes their own alt: it wins, and our mark goes.
  later.setAttribute("alt", "Sunset over the bay");
  mutations.callback([{ type: "attributes", target: later, attributeName: "alt" }]);
  assert.equal(later.getAttribute("alt"), "Sunset over the bay");
  assert.equal(later.hasAttribute("data-altcap"), false);
  await p.message({ type: "toggle" });
  assert.equal(later.getAttribute("alt"), "Sunset over the bay"); // not ours to restore
});

test("role=img with a background and no name gets an aria-label, followed and toggled", async () => {
  const hero = ariaImage(); // url("https://example.com/hero.jpg")
  const named = ariaImage({ "aria-label": "Our harbour at dusk" }, 'url("https://example.com/named.jpg")');
  const icon = ariaImage({}, "none"); // an emoji or an icon font: nothing to caption
  const p = page({ elements: [hero, named, icon], worker: captionEach });
  await sleep(120);
  assert.deepEqual(
    describes(p.sent).flatMap((m) => Array.from(m.images, (i) => i.url)),
    ["https://example.com/hero.jpg"],
  );
  assert.equal(hero.getAttribute("aria-label"), "Appears to be: A picture of hero.jpg.");
  assert.equal(hero.getAttribute("data-altcap"), "__none__");
  assert.equal(hero.hasAttribute("alt"), false);
  assert.equal(named.getAttribute("aria-label"), "Our harbour at dusk");
  for (const el of [named, icon]) assert.equal(el.hasAttribute("data-altcap"), false);

  // Our own write is not mistaken for the author's; hiding and showing put it back exactly.
  const [mutations] = p.observers.mutation;
  mutations.callback([{ type: "attributes", target: hero, attributeName: "aria-label" }]);
  assert.equal(hero.getAttribute("data-altcap"), "__none__");
  await p.message({ type: "toggle" });
  assert.equal(hero.hasAttribute("aria-label"), false);
  assert.equal(hero.hasAttribute("data-altcap"), false);
  await p.message({ type: "toggle" });
  assert.equal(hero.getAttribute("aria-label"), "Appears to be: A picture of hero.jpg.");

  // The author names it later: their name wins and our mark goes.
  hero.setAttribute("aria-label", "The harbour from the hill");
  mutations.callback([{ type: "attributes", target: hero, attributeName: "aria-label" }]);
  assert.equal(hero.getAttribute("aria-label"), "The harbour from the hill");
  assert.equal(hero.hasAttribute("data-altcap"), false);
  assert.equal(describes(p.sent).length, 1);
});

test("an ARIA image whose role the page takes away loses our aria-label", async () => {
  const hero = ariaImage();
  const p = page({ elements: [hero], worker: captionEach });
  await sleep(120);
  assert.equal(hero.getAttribute("aria-label"), "Appears to be: A picture of hero.jpg.");
  hero.setAttribute("role", "presentation");
  const [mutations] = p.observers.mutation;
  mutations.callback([{ type: "attributes", target: hero, attributeName: "role" }]);
  assert.equal(hero.hasAttribute("aria-label"), false);
  assert.equal(hero.hasAttribute("data-altcap"), false);
  assert.equal((await p.message({ type: "status" })).described, 0);
});

test("lazy images are described when they load", async () => {
  const lazy = img({ src: "https://example.com/lazy.jpg", loading: "lazy" }, { complete: false });
  const p = page({ elements: [lazy], worker: captionEach });
  await sleep(120);
  assert.equal(describes(p.sent).length, 0);
  lazy.complete = true;
  p.document.dispatch("load", lazy);
  await sleep(120);
  assert.equal(lazy.getAttribute("alt"), "Appears to be: A picture of lazy.jpg.");
});

test("the focused and visible images go first", async () => {
  const elements = Array.from({ length: 40 }, (_, i) => img({ src: `https://example.com/${i}.jpg` }));
  let release;
  const gate = new Promise((resolve) => (release = resolve));
  const p = page({
    elements,
    worker: async (m) => {
      await gate;
      return captionEach(m);
    },
  });
  p.document.activeElement = elements[39];
  await sleep(5); // "hello" answered, observers attached; the batch leaves after 40 ms
  const [io] = p.observers.intersection;
  // The visible ones are reported before the batch leaves.
  io.callback([{ target: elements[35], isIntersecting: true }]);
  await sleep(120);
  release();
  const [firstBatch] = describes(p.sent);
  assert.equal(firstBatch.images.length, 32);
  assert.equal(firstBatch.images[0].url, "https://example.com/39.jpg");
  assert.equal(firstBatch.images[1].url, "https://example.com/35.jpg");
  await sleep(150);
  assert.equal(elements.filter((e) => e.hasAttribute("data-altcap")).length, 40);
});

test("failures are counted, nothing throws, and describe-now retries them", async () => {
  const el = img({ src: "https://example.com/a.jpg" });
  let down = true;
  const p = page({
    elements: [el],
    worker: async (m) => {
      if (down) throw new Error("Could not establish connection");
      return captionEach(m);
    },
  });
  await sleep(120);
  let status = await p.message({ type: "status" });
  assert.equal(status.failed, 1);
  assert.equal(el.hasAttribute("alt"), false);

  down = false;
  const answer = await p.message({ type: "describe-now" });
  assert.equal(answer.ok, true);
  await sleep(120);
  assert.equal(el.getAttribute("alt"), "Appears to be: A picture of a.jpg.");
  status = await p.message({ type: "status" });
  assert.equal(status.failed, 0);
  assert.equal(status.described, 1);
  // The summary is announced in a polite live region.
  await sleep(200);
  const live = p.document.elements.find((e) => e.hasAttribute("data-altcap-live"));
  assert.ok(live);
  assert.equal(live.getAttribute("aria-live"), "polite");
  assert.match(live.textContent, /AltCap: 1 image described/);
});

test("on-demand pages wait for describe-now", async () => {
  const el = img({ src: "https://example.com/a.jpg" });
  const p = page({ elements: [el], worker: captionEach, auto: false });
  await sleep(120);
  assert.equal(describes(p.sent).length, 0);
  await p.message({ type: "describe-now" });
  await sleep(120);
  assert.equal(el.getAttribute("alt"), "Appears to be: A picture of a.jpg.");
});

test("on a page in another language, descriptions are marked with the captions' language", async () => {
  const inEnglish = (message) => ({ ...captionEach(message), results: captionEach(message).results.map((r) => ({ ...r, language: "en" })) });
  const cat = img({ src: "https://example.com/cat.jpg" });
  const p = page({ elements: [cat], worker: inEnglish, setup: (d) => d.documentElement.setAttribute("lang", "fr") });
  await sleep(120);
  assert.equal(cat.getAttribute("alt"), "Appears to be: A picture of cat.jpg.");
  assert.equal(cat.getAttribute("lang"), "en");

  await p.message({ type: "toggle" }); // hidden: the page as it was, lang included
  assert.equal(cat.hasAttribute("lang"), false);
  assert.equal(cat.hasAttribute("data-altcap-lang"), false);
  await p.message({ type: "toggle" }); // shown again from the page's cache: language kept
  assert.equal(cat.getAttribute("lang"), "en");

  // The context menu's caption is written and announced in its language; AltCap's own
  // messages are English, whatever the page's language.
  const dog = p.document.add(img({ src: "https://example.com/dog.jpg", alt: "Médor" }));
  await p.message({ type: "describe-target", srcUrl: "https://example.com/dog.jpg" });
  assert.equal(dog.hasAttribute("lang"), false); // author text kept: nothing written
  await sleep(200);
  const live = p.document.elements.find((e) => e.hasAttribute("data-altcap-live"));
  assert.equal(live.textContent, "Appears to be: A picture of dog.jpg.");
  assert.equal(live.getAttribute("lang"), "en");
});

test("context menu: caption one image, write it, announce it", async () => {
  const el = img({ src: "https://example.com/a.jpg" });
  const p = page({ elements: [el], worker: captionEach, auto: false });
  p.document.dispatch("contextmenu", el);
  const answer = await p.message({ type: "describe-target", srcUrl: "https://example.com/a.jpg" });
  assert.equal(answer.caption, "A picture of a.jpg.");
  assert.equal(el.getAttribute("alt"), "Appears to be: A picture of a.jpg.");
  await sleep(200);
  const live = p.document.elements.find((e) => e.hasAttribute("data-altcap-live"));
  assert.equal(live.textContent, "Appears to be: A picture of a.jpg.");

  // Author text is announced but never overwritten.
  const kept = p.document.add(img({ src: "https://example.com/k.jpg", alt: "Our CEO" }));
  await p.message({ type: "describe-target", srcUrl: "https://example.com/k.jpg" });
  assert.equal(kept.getAttribute("alt"), "Our CEO");
});

test("an image of text gets its text after the text prefix from hello, through toggles", async () => {
  // issue 22: the server's alt is written instead of the caption, with the mark that fits it.
  const says = (message) => ({
    results: message.images.map((image) =>
      image.url.endsWith("sale.png")
        ? { id: image.id, caption: "a sign", text: "SALE\n50% OFF", alt: "SALE 50% OFF", alt_from: "text", language: "en" }
        : { id: image.id, caption: "A cat.", text: "", alt: "A cat.", alt_from: "caption", language: "en" },
    ),
  });
  const sale = img({ src: "https://example.com/sale.png" });
  const cat = img({ src: "https://example.com/cat.jpg" });
  const p = page({ elements: [sale, cat], worker: says, hello: { textPrefix: "Image text: " } });
  await sleep(120);
  assert.equal(sale.getAttribute("alt"), "Image text: SALE 50% OFF");
  assert.equal(sale.getAttribute("data-altcap"), "__none__");
  assert.equal(cat.getAttribute("alt"), "Appears to be: A cat.");
  await p.message({ type: "toggle" });
  assert.equal(sale.hasAttribute("alt"), false);
  await p.message({ type: "toggle" }); // from the page's cache: still text, still its mark
  assert.equal(sale.getAttribute("alt"), "Image text: SALE 50% OFF");
  assert.equal(describes(p.sent).length, 1);
  const status = await p.message({ type: "status" });
  assert.equal(status.described, 2);
});

test("a thin banner is written only with its own text, never a caption alone", async () => {
  // issue 22: a banner's caption says nothing ("a close up of a wall"); its text does.
  const BANNER = { rect: { width: 728, height: 90 } };
  const answers = {
    "sale.png": { caption: "a sign", text: "FREE SHIPPING", alt: "FREE SHIPPING", alt_from: "text" },
    "shop.png": { caption: "A shop.", text: "Summer sale", alt: "A shop. Appears to say: Summer sale", alt_from: "caption_and_text" },
    "strip.png": { caption: "A blue wall.", text: "", alt: "A blue wall.", alt_from: "caption" },
    "old.png": { caption: "An orange wall." }, // a server from before issue 22: no alt_from
    "photo.jpg": { caption: "A cat.", text: "", alt: "A cat.", alt_from: "caption" },
  };
  const worker = (message) => ({
    results: message.images.map((image) => ({ id: image.id, ...answers[image.url.split("/").pop()] })),
  });
  const at = (name, attrs = {}, opts = BANNER) => img({ src: `https://example.com/${name}`, ...attrs }, opts);
  const sale = at("sale.png");
  const shop = at("shop.png");
  const strip = at("strip.png");
  const old = at("old.png", { alt: "banner" }); // meaningless: as good as none
  const photo = at("photo.jpg", {}, {}); // 300 x 200: no banner
  const p = page({ elements: [sale, shop, strip, old, photo], worker });
  await until(() => photo.hasAttribute("alt"));
  await sleep(20);

  assert.equal(describes(p.sent).length, 1); // banners are sent with the rest
  assert.equal(describes(p.sent)[0].images.length, 5);
  assert.equal(sale.getAttribute("alt"), "Appears to say: FREE SHIPPING");
  assert.equal(sale.getAttribute("data-altcap"), "__none__");
  assert.equal(shop.getAttribute("alt"), "Appears to be: A shop. Appears to say: Summer sale");
  assert.equal(photo.getAttribute("alt"), "Appears to be: A cat."); // a caption, not a banner
  for (const el of [strip, old]) assert.equal(el.hasAttribute("data-altcap"), false);
  assert.equal(strip.hasAttribute("alt"), false);
  assert.equal(old.getAttribute("alt"), "banner");
  // Counted as a skipped banner always was: neither needing a description nor failed.
  let status = await p.message({ type: "status" });
  assert.deepEqual([status.found, status.described, status.failed], [3, 3, 0]);

  // Hidden and shown, then looked at again (describe-now, visibility): never written, never
  // sent again (the caption is cached), still not counted.
  await p.message({ type: "toggle" });
  assert.equal(sale.hasAttribute("alt"), false);
  await p.message({ type: "toggle" });
  assert.equal(sale.getAttribute("alt"), "Appears to say: FREE SHIPPING");
  await p.message({ type: "describe-now", quiet: true });
  p.observers.intersection[0].callback([{ target: strip, isIntersecting: true }]);
  await sleep(120);
  assert.equal(strip.hasAttribute("alt"), false);
  assert.equal(describes(p.sent).length, 1);
  status = await p.message({ type: "status" });
  assert.deepEqual([status.found, status.described, status.failed], [3, 3, 0]);

  // "Describe this image" is the user asking: the banner's caption is announced and written.
  await p.message({ type: "describe-target", srcUrl: "https://example.com/strip.png" });
  assert.equal(strip.getAttribute("alt"), "Appears to be: A blue wall.");
});

test("messages from elsewhere are ignored; injecting twice is harmless", async () => {
  const el = img({ src: "https://example.com/a.jpg" });
  const p = page({ elements: [el], worker: captionEach, auto: false });
  assert.equal(await p.message({ type: "describe-now" }, "another-extension"), undefined);
  assert.equal(await p.message({ type: "unknown" }), undefined);
  assert.doesNotThrow(() => p.inject());
  await sleep(50);
  assert.equal(p.sent.filter((m) => m.type === "hello").length, 1);
});

test("a content script whose extension is gone stays quiet", async () => {
  const document = new FakeDocument();
  document.add(img());
  const context = vm.createContext({
    document,
    setTimeout,
    clearTimeout,
    chrome: {
      runtime: {
        id: RUNTIME_ID,
        sendMessage() {
          throw new Error("Extension context invalidated.");
        },
        onMessage: { addListener() {} },
      },
    },
  });
  context.window = context;
  vm.runInContext(code("detection.js"), context);
  vm.runInContext(code("caption-text.js"), context);
  vm.runInContext(code("page-image.js"), context);
  assert.doesNotThrow(() => vm.runInContext(code("content-script.js"), context));
  await sleep(50);
});

// --- shadow roots and frames -------------------------------------------------------------

/** <x-card> with an open shadow root: a bare image, an author-described one, and a nested
 * <x-badge> whose own shadow root holds another bare image. */
function webComponents(document) {
  const card = document.add(new FakeElement("x-card"));
  const outer = card.attachShadow({ mode: "open" });
  const inner = outer.add(img({ src: "https://example.com/shadow.jpg" }));
  const author = outer.add(img({ src: "https://example.com/kept.jpg", alt: "Our shop in Porto" }));
  const badge = outer.add(new FakeElement("x-badge"));
  const nestedRoot = badge.attachShadow({ mode: "open" });
  const nested = nestedRoot.add(img({ src: "https://example.com/nested.jpg" }));
  const locked = document.add(new FakeElement("x-locked"));
  const closed = locked.attachShadow({ mode: "closed" }).add(img({ src: "https://example.com/closed.jpg" }));
  return { card, outer, inner, author, nestedRoot, nested, closed };
}

test("images in open shadow roots, nested ones too, are described and restored by the toggle", async () => {
  let dom;
  const top = img({ src: "https://example.com/top.jpg" });
  const p = page({ elements: [top], worker: captionEach, setup: (d) => (dom = webComponents(d)) });
  await sleep(120);

  const urls = describes(p.sent).flatMap((m) => Array.from(m.images, (i) => i.url));
  assert.deepEqual(urls.sort(), ["https://example.com/nested.jpg", "https://example.com/shadow.jpg", "https://example.com/top.jpg"]);
  assert.equal(dom.inner.getAttribute("alt"), "Appears to be: A picture of shadow.jpg.");
  assert.equal(dom.inner.getAttribute("data-altcap"), "__none__");
  assert.equal(dom.nested.getAttribute("alt"), "Appears to be: A picture of nested.jpg.");
  assert.equal(dom.author.getAttribute("alt"), "Our shop in Porto");
  assert.equal(dom.author.hasAttribute("data-altcap"), false);
  assert.equal(dom.closed.hasAttribute("alt"), false); // a closed root stays out of reach
  // Each open root is watched by the page's observer, and for load events.
  const [mutations] = p.observers.mutation;
  assert.ok(mutations.targets.includes(dom.outer) && mutations.targets.includes(dom.nestedRoot));
  assert.equal(dom.outer.listeners.load.length, 1);
  assert.equal((await p.message({ type: "status" })).described, 3);

  const off = await p.message({ type: "toggle" });
  assert.equal(off.showing, false);
  for (const el of [top, dom.inner, dom.nested]) {
    assert.equal(el.hasAttribute("alt"), false);
    assert.equal(el.hasAttribute("data-altcap"), false);
  }
  assert.equal(dom.author.getAttribute("alt"), "Our shop in Porto");
  await p.message({ type: "toggle" });
  assert.equal(dom.nested.getAttribute("alt"), "Appears to be: A picture of nested.jpg.");
  assert.equal(describes(p.sent).length, 1); // shown again from the page's cache
});

test("closed shadow roots are opened where the browser lets extensions: Chrome and Firefox", async () => {
  const chromeDom = { openOrClosedShadowRoot: (el) => el.anyShadowRoot || null };
  const firefox = (d) => {
    const dom = webComponents(d);
    for (const el of d.elements) el.openOrClosedShadowRoot = el.anyShadowRoot || null; // Firefox's
    return dom;
  };
  for (const [name, options] of [
    ["chrome.dom", { dom: chromeDom, setup: webComponents }],
    ["openOrClosedShadowRoot", { setup: firefox }],
  ]) {
    let dom;
    const p = page({ worker: captionEach, ...options, setup: (d) => (dom = options.setup(d)) });
    await sleep(120);
    assert.equal(dom.closed.getAttribute("alt"), "Appears to be: A picture of closed.jpg.", name);
    assert.equal(dom.closed.getAttribute("data-altcap"), "__none__", name);
    const [mutations] = p.observers.mutation;
    assert.ok(mutations.targets.includes(dom.closed.parentNode), name); // the closed root, watched
    assert.equal((await p.message({ type: "status" })).described, 3, name);
    await p.message({ type: "toggle" });
    assert.equal(dom.closed.hasAttribute("alt"), false, name);
    assert.equal(dom.closed.hasAttribute("data-altcap"), false, name);
  }
});

test("closed roots on built-in elements are looked for on empty ones only", async () => {
  // A shadow host shows its shadow tree, not its children: a built-in host is empty (a
  // widget's <div>). Asking the browser about every div and span with content costs ~3 us
  // each on large pages, so those are not asked; custom elements always are.
  const asked = [];
  const chromeDom = {
    openOrClosedShadowRoot: (el) => {
      asked.push(el.id);
      return el.anyShadowRoot || null;
    },
  };
  let found;
  const p = page({
    worker: captionEach,
    dom: chromeDom,
    setup: (d) => {
      const host = (tag, id, opts = {}) => {
        const el = d.add(new FakeElement(tag, {}, opts));
        el.id = id;
        return el;
      };
      const widget = host("div", "widget", { text: " \n " });
      const image = widget.attachShadow({ mode: "closed" }).add(img({ src: "https://example.com/widget.jpg" }));
      const texty = host("span", "texty", { text: "Prices" });
      texty.attachShadow({ mode: "closed" }).add(img({ src: "https://example.com/texty.jpg" }));
      const parent = host("div", "parent");
      parent.firstElementChild = texty;
      host("p", "para");
      host("x-card", "card", { text: "light text" });
      host("ul", "list"); // cannot host a shadow root at all
      found = image;
    },
  });
  await sleep(120);
  assert.equal(found.getAttribute("alt"), "Appears to be: A picture of widget.jpg.");
  const urls = describes(p.sent).flatMap((m) => Array.from(m.images, (i) => i.url));
  assert.deepEqual(urls, ["https://example.com/widget.jpg"]);
  assert.deepEqual([...new Set(asked)].sort(), ["card", "para", "widget"]);
});

test("a big page is scanned in slices: the page gets its turn, every image is found", async () => {
  // 3,000 elements, 150 images among them. The clock moves 1 ms a reading, so a slice
  // (8 ms, the clock read every 64 elements) is ~512 elements.
  const elements = [];
  for (let i = 0; i < 3000; i++) {
    elements.push(i % 20 === 19 ? img({ src: `https://example.com/${i}.jpg` }) : new FakeElement("div", {}, { text: "Text" }));
  }
  let t = 0;
  const clock = { now: () => ++t };
  let seenByPageTask = -1;
  let p = null;
  const observed = () => p.observers.intersection[0].targets.length; // images looked at
  // A task the page queues just before the scan starts: it must run before the scan ends.
  const onHello = () => setTimeout(() => (seenByPageTask = observed()), 0);
  p = page({ elements, worker: captionEach, clock, onHello });
  await sleep(200);

  assert.ok(seenByPageTask >= 0, "the page's task ran");
  assert.ok(seenByPageTask < 150, `the scan was not one task (it had seen ${seenByPageTask} of 150 images)`);
  assert.equal(observed(), 150);
  const urls = describes(p.sent).flatMap((m) => Array.from(m.images, (i) => i.url));
  assert.equal(new Set(urls).size, 150);
  assert.equal(elements[19].getAttribute("alt"), "Appears to be: A picture of 19.jpg.");
  assert.equal(elements[2999].getAttribute("alt"), "Appears to be: A picture of 2999.jpg.");

  // Images added later, while nothing is being scanned, are looked at at once (one slice).
  const [mutations] = p.observers.mutation;
  const later = p.document.add(img({ src: "https://example.com/later.jpg" }));
  mutations.callback([{ type: "childList", addedNodes: [later] }]);
  assert.equal(observed(), 151);
});

test("stopping mid-scan drops the rest of it", async () => {
  const elements = [];
  for (let i = 0; i < 3000; i++) {
    elements.push(i % 20 === 19 ? img({ src: `https://example.com/${i}.jpg` }) : new FakeElement("div", {}, { text: "Text" }));
  }
  let t = 0;
  let p = null;
  let seen = -1;
  // The user switches the site off before the scan's second slice.
  const onHello = () => setTimeout(() => p.message({ type: "restore" }).then(() => (seen = p.sent.length)), 0);
  p = page({ elements, worker: captionEach, clock: { now: () => ++t }, onHello });
  await sleep(200);
  assert.ok(seen >= 0);
  const looked = p.observers.intersection[0].targets.length;
  assert.ok(looked < 150, `looked at ${looked} images`);
  assert.equal(describes(p.sent).length, 0);
  assert.ok(elements.every((el) => !el.hasAttribute("data-altcap")));
});

test("images added inside a shadow root later, or loading late there, are described", async () => {
  let dom;
  const p = page({ worker: captionEach, setup: (d) => (dom = webComponents(d)) });
  await sleep(120);
  const [mutations] = p.observers.mutation;

  const added = dom.outer.add(img({ src: "https://example.com/added.jpg" }));
  mutations.callback([{ type: "childList", target: dom.outer, addedNodes: [added] }]);
  const lazy = dom.nestedRoot.add(img({ src: "https://example.com/lazy.jpg" }, { complete: false }));
  mutations.callback([{ type: "childList", target: dom.nestedRoot, addedNodes: [lazy] }]);
  await sleep(120);
  assert.equal(added.getAttribute("alt"), "Appears to be: A picture of added.jpg.");
  assert.equal(lazy.hasAttribute("alt"), false);
  lazy.complete = true;
  dom.nestedRoot.dispatch("load", lazy); // load does not leave a shadow tree
  await sleep(120);
  assert.equal(lazy.getAttribute("alt"), "Appears to be: A picture of lazy.jpg.");

  // A component added later with its shadow root already attached (defined elements).
  const widget = new FakeElement("x-widget");
  const widgetImg = widget.attachShadow({ mode: "open" }).add(img({ src: "https://example.com/widget.jpg" }));
  p.document.add(widget);
  mutations.callback([{ type: "childList", target: p.document.body, addedNodes: [widget] }]);
  await sleep(120);
  assert.equal(widgetImg.getAttribute("alt"), "Appears to be: A picture of widget.jpg.");
});

test("a custom element that gets its shadow root after insertion is looked at again", async () => {
  const late = new FakeElement("x-late");
  const p = page({ elements: [late], worker: captionEach });
  await sleep(120);
  assert.equal(describes(p.sent).length, 0);
  // Its definition loads: the root is attached and filled, and nothing in the document changes.
  const inside = late.attachShadow({ mode: "open" }).add(img({ src: "https://example.com/late.jpg" }));
  await sleep(700);
  assert.equal(inside.getAttribute("alt"), "Appears to be: A picture of late.jpg.");
  assert.ok(p.observers.mutation[0].targets.includes(late.shadowRoot));
});

test("aria-hidden on a shadow host hides its images; labels resolve in the shadow tree", async () => {
  const host = new FakeElement("x-hidden", { "aria-hidden": "true" });
  const hidden = host.attachShadow({ mode: "open" }).add(img({ src: "https://example.com/h.jpg" }));
  const labelled = new FakeElement("x-labelled");
  const root = labelled.attachShadow({ mode: "open" });
  root.add(new FakeElement("p", { id: "cap" }, { text: "The harbour at dawn" }));
  const named = root.add(img({ src: "https://example.com/l.jpg", "aria-labelledby": "cap" }));
  named.getRootNode = () => root;
  const p = page({ elements: [host, labelled], worker: captionEach });
  await sleep(120);
  assert.equal(describes(p.sent).length, 0);
  assert.equal(hidden.hasAttribute("alt"), false);
  assert.equal(named.hasAttribute("alt"), false);
});

test("a frame that loads after the tab hid the descriptions starts hidden", async () => {
  const el = img({ src: "https://example.com/a.jpg" });
  const p = page({ elements: [el], worker: captionEach, hello: { showing: false } });
  await sleep(120);
  assert.equal(describes(p.sent).length, 0);
  assert.equal((await p.message({ type: "status" })).showing, false);
  // The service worker sets every frame to the same state: asking for the current one is a
  // no-op, the other one switches.
  assert.equal((await p.message({ type: "toggle", showing: false })).showing, false);
  assert.equal(el.hasAttribute("alt"), false);
  assert.equal((await p.message({ type: "toggle", showing: true })).showing, true);
  await sleep(120);
  assert.equal(el.getAttribute("alt"), "Appears to be: A picture of a.jpg.");
  assert.equal((await p.message({ type: "toggle", showing: true })).showing, true);
  assert.equal(el.getAttribute("alt"), "Appears to be: A picture of a.jpg.");
});

test("describe-now in another frame of the tab describes quietly", async () => {
  const el = img({ src: "https://example.com/a.jpg" });
  const p = page({ elements: [el], worker: captionEach, auto: false });
  await sleep(50);
  const answer = await p.message({ type: "describe-now", quiet: true });
  assert.equal(answer.ok, true);
  await sleep(350);
  assert.equal(el.getAttribute("alt"), "Appears to be: A picture of a.jpg.");
  assert.equal(p.document.elements.some((e) => e.hasAttribute("data-altcap-live")), false);
});

// --- what a hostile page must not get (issue 20) -------------------------------------------

test("a page cannot switch AltCap off by naming an element after its guard (DOM clobbering)", async () => {
  // <div id="__altcapContentScript"> makes window.__altcapContentScript that element, in the
  // content script's world too: a guard kept in that global took the page for one already
  // described. The guard is a symbol now, which no element can be named.
  const el = img({ src: "https://example.com/a.jpg" });
  const named = (id) => new FakeElement("div", { id });
  const p = page({
    elements: [el],
    worker: captionEach,
    globals: { __altcapContentScript: named("__altcapContentScript"), AltCapDetection: named("AltCapDetection") },
  });
  await sleep(120);
  assert.equal(el.getAttribute("alt"), "Appears to be: A picture of a.jpg.");
  p.inject(); // a second copy (describe-now) still does nothing
  await sleep(50);
  assert.equal(p.sent.filter((m) => m.type === "hello").length, 1);
});

const PNG = new Uint8Array([137, 80, 78, 71]);
const image = (bytes, type) => new Response(bytes, { headers: { "Content-Type": type } });

/** A page's fetch() (records its calls), a canvas that records what is drawn on it, and an
 * Image that decodes data: URLs. */
function browserParts(respond = () => image(PNG, "image/png")) {
  const fetched = [];
  const drawn = [];
  const fetch = async (url, init) => {
    fetched.push({ url, init });
    return respond(url, init);
  };
  class Image {
    constructor() {
      this.naturalWidth = 64;
      this.naturalHeight = 48;
    }
    decode() {
      return /^data:image\//.test(this.src) ? Promise.resolve() : Promise.reject(new Error("cannot decode"));
    }
  }
  const canvas = () => ({
    getContext: () => ({ fillRect() {}, drawImage: (source) => drawn.push(source) }),
    toDataURL: () => "data:image/jpeg;base64,/9j/c25hcHNob3Q=",
  });
  const setup = (document) => {
    const create = document.createElement.bind(document);
    document.createElement = (tag) => (tag === "canvas" ? canvas() : create(tag));
  };
  return { fetched, drawn, globals: { fetch, Image }, setup };
}

/** A worker that asks for `code` (needs_bytes, needs_canvas) first, and captions data. */
const askingFor = (code) => (message) => ({
  results: message.images.map((i) =>
    i.data ? { id: i.id, caption: `From ${i.data.slice(0, 22)}` } : { id: i.id, error: { code, message: "send the image" } },
  ),
});

test("needs_bytes: the content script reads the image as the page may (CORS, the page's credentials)", async () => {
  const parts = browserParts();
  const own = img({ src: "https://example.com/own.png" });
  const shared = img({ src: "https://cdn.example/shared.png" });
  shared.crossOrigin = "use-credentials"; // <img crossorigin="use-credentials">: the page sends cookies
  const hero = ariaImage({}, 'url("https://cdn.example/hero.png")');
  const p = page({ elements: [own, shared, hero], worker: askingFor("needs_bytes"), ...parts });
  await until(() => own.hasAttribute("alt") && hero.hasAttribute("aria-label"));
  assert.deepEqual(
    parts.fetched.map((f) => [f.url, f.init.mode, f.init.credentials]),
    [
      ["https://example.com/own.png", "cors", "same-origin"],
      ["https://cdn.example/shared.png", "cors", "include"],
      ["https://cdn.example/hero.png", "cors", "same-origin"],
    ],
  );
  assert.deepEqual(parts.drawn, []); // the bytes as read, not a drawing of the page's image
  const second = describes(p.sent)[1].images;
  assert.deepEqual(Array.from(second, (i) => i.data), Array(3).fill("data:image/png;base64,iVBORw=="));
  assert.equal(own.getAttribute("alt"), "Appears to be: From data:image/png;base64,");
  assert.equal(hero.getAttribute("aria-label"), "Appears to be: From data:image/png;base64,");
});

test("needs_bytes: an image the page may not read (CORS refused) is not sent, and fails", async () => {
  const parts = browserParts(() => {
    throw new TypeError("Failed to fetch"); // what a CORS refusal looks like
  });
  const stolen = ariaImage({}, 'url("http://victim.test/secret.png")');
  const button = new FakeElement("input", { type: "image", src: "http://victim.test/secret.png" });
  const p = page({ elements: [stolen, button], worker: askingFor("needs_bytes"), ...parts });
  await until(async () => (await p.message({ type: "status" })).failed === 2);
  assert.equal(parts.fetched.length, 2);
  assert.equal(describes(p.sent).length, 1); // the address only: no bytes follow
  assert.equal(stolen.hasAttribute("aria-label"), false);
  assert.equal(button.hasAttribute("alt"), false);
  assert.equal((await p.message({ type: "status" })).failed, 2);
});

test("needs_bytes: a web page instead of an image, or one too large, is not sent", async () => {
  const parts = browserParts((url) =>
    url.endsWith("login") ? image("<html>", "text/html") : new Response(PNG, { headers: { "Content-Type": "image/png", "Content-Length": String(64 * 1024 * 1024) } }),
  );
  const p = page({
    elements: [img({ src: "https://example.com/login" }), img({ src: "https://example.com/huge.png" })],
    worker: askingFor("needs_bytes"),
    ...parts,
  });
  await until(async () => (await p.message({ type: "status" })).failed === 2);
  assert.equal(describes(p.sent).length, 1);
  assert.equal((await p.message({ type: "status" })).failed, 2);
});

test("in Firefox the bytes are read with content.fetch(), the page's own", async () => {
  // The content script's own fetch() carries the extension's principal there.
  const own = browserParts();
  const pageFetch = browserParts();
  const p = page({
    elements: [img({ src: "https://example.com/own.png" })],
    worker: askingFor("needs_bytes"),
    extensionUrl: "moz-extension://0c1d/",
    ...own,
    globals: { ...own.globals, content: { fetch: pageFetch.globals.fetch } },
  });
  await until(() => describes(p.sent).length >= 2);
  assert.equal(own.fetched.length, 0);
  assert.equal(pageFetch.fetched.length, 1);
  assert.equal(describes(p.sent).length, 2);
});

test("needs_canvas: the snapshot is drawn from the bytes the page may read, never from the element", async () => {
  // Firefox lets an extension with access to all sites read a canvas that a cross-origin
  // image tainted, and a same-origin address may redirect to another site: what an <img>
  // shows is not proof that the page may read it.
  const svg = "<svg xmlns='http://www.w3.org/2000/svg' width='20' height='10'/>";
  const parts = browserParts(() => image(svg, "image/svg+xml"));
  const el = img({ src: "https://example.com/drawing.svg" });
  const p = page({ elements: [el], worker: askingFor("needs_canvas"), ...parts });
  await until(() => el.hasAttribute("alt"));
  assert.equal(parts.drawn.length, 1);
  assert.notEqual(parts.drawn[0], el);
  assert.match(parts.drawn[0].src, /^data:image\/svg\+xml;base64,/);
  assert.equal(describes(p.sent)[1].images[0].data, "data:image/jpeg;base64,/9j/c25hcHNob3Q=");
  assert.match(el.getAttribute("alt"), /^Appears to be: From data:image\/jpeg;base64/);
});

test("blob: images are drawn only when the page itself made them", async () => {
  const parts = browserParts();
  const mine = img({ src: "blob:https://example.com/1b2c" });
  const theirs = img({ src: "blob:https://other.example/3d4e" });
  const p = page({ elements: [mine, theirs], worker: askingFor("needs_canvas"), ...parts });
  await sleep(200);
  assert.deepEqual(parts.drawn, [mine]);
  assert.equal(parts.fetched.length, 0);
  assert.ok(mine.getAttribute("alt"));
  assert.equal(theirs.hasAttribute("alt"), false);
  assert.equal((await p.message({ type: "status" })).failed, 1);
});

test("a failed \"Describe this image\" says so without the server's words or address", async () => {
  // The live region is in the page: the page reads what is announced.
  const el = img({ src: "https://example.com/a.jpg" });
  const worker = (m) => ({
    results: m.images.map((i) => ({ id: i.id, error: { code: "server_unreachable", message: "cannot reach the AltCap server at http://10.9.8.7:8000" } })),
  });
  const p = page({ elements: [el], worker, auto: false });
  const answer = await p.message({ type: "describe-target", srcUrl: "https://example.com/a.jpg" });
  assert.equal(answer.ok, false);
  await sleep(200);
  const live = p.document.elements.find((e) => e.hasAttribute("data-altcap-live"));
  assert.equal(live.textContent, "AltCap could not describe this image: the AltCap server did not answer.");
});

// --- trust (issue 23) -------------------------------------------------------------------------

test("a description the server does not believe is not written, and counted as no confident description", async () => {
  // confident === false and alt_from !== "text": nothing invented reaches a screen reader.
  const answers = {
    "dog.jpg": { caption: "A dog on a sofa.", alt: "A dog on a sofa.", alt_from: "caption", confidence: 0.12, confident: false },
    "shop.jpg": { caption: "A shop.", text: "Sale", alt: "A shop. Appears to say: Sale", alt_from: "caption_and_text", confident: false },
    "sale.png": { caption: "a sign", text: "SALE", alt: "SALE", alt_from: "text", confidence: 0.1, confident: false },
    "cat.jpg": { caption: "A cat.", alt: "A cat.", alt_from: "caption", confidence: 0.93, confident: true },
    "old.jpg": { caption: "An owl." }, // a server without a text tower, or not AltCap
  };
  const worker = (message) => ({
    results: message.images.map((image) => ({ id: image.id, ...answers[image.url.split("/").pop()] })),
  });
  const at = (name, attrs = {}) => img({ src: `https://example.com/${name}`, ...attrs });
  const dog = at("dog.jpg");
  const shop = at("shop.jpg", { alt: "photo" }); // meaningless: as good as none
  const sale = at("sale.png");
  const cat = at("cat.jpg");
  const old = at("old.jpg");
  const p = page({ elements: [dog, shop, sale, cat, old], worker });
  await until(() => old.hasAttribute("alt"));
  await sleep(20);

  assert.equal(dog.hasAttribute("alt"), false);
  assert.equal(dog.hasAttribute("data-altcap"), false);
  assert.equal(shop.getAttribute("alt"), "photo"); // the page's own, untouched
  assert.equal(shop.hasAttribute("data-altcap"), false);
  assert.equal(sale.getAttribute("alt"), "Appears to say: SALE"); // the image's own text is kept
  assert.equal(cat.getAttribute("alt"), "Appears to be: A cat.");
  assert.equal(old.getAttribute("alt"), "Appears to be: An owl.");
  let status = await p.message({ type: "status" });
  assert.deepEqual([status.found, status.described, status.unsure, status.failed], [5, 3, 2, 0]);
  await sleep(450);
  assert.deepEqual({ ...p.sent.filter((m) => m.type === "counts").at(-1) }, { type: "counts", found: 5, described: 3, failed: 0, unsure: 2, suspect: 0 });

  // Hidden and shown again, and "describe now": still nothing written, nothing sent again.
  await p.message({ type: "toggle" });
  await p.message({ type: "toggle" });
  assert.equal(dog.hasAttribute("alt"), false);
  assert.equal(cat.getAttribute("alt"), "Appears to be: A cat.");
  await p.message({ type: "describe-now" });
  await sleep(200);
  assert.equal(describes(p.sent).length, 1);
  status = await p.message({ type: "status" });
  assert.deepEqual([status.found, status.described, status.unsure, status.failed], [5, 3, 2, 0]);
  const live = p.document.elements.find((e) => e.hasAttribute("data-altcap-live"));
  assert.equal(live.textContent, "AltCap: 3 images described, 2 with no confident description.");

  // "Describe this image": the user asks, and is told there is nothing AltCap believes.
  const answer = await p.message({ type: "describe-target", srcUrl: "https://example.com/dog.jpg" });
  assert.equal(answer.ok, false);
  assert.equal(dog.hasAttribute("alt"), false);
  await sleep(200);
  assert.equal(live.textContent, "AltCap has no confident description of this image.");
  assert.equal(describes(p.sent).length, 1); // from the page's cache

  // Put back: nothing counted any more.
  await p.message({ type: "restore" });
  status = await p.message({ type: "status" });
  assert.deepEqual([status.found, status.described, status.unsure], [0, 0, 0]);
});

/** A worker that checks authors' alts as the server does: "suspect" for an alt about a star,
 * "matches" otherwise; every image's caption is a red circle. */
function checker(extra = {}) {
  return (message) => ({
    results: message.images.map((image) => {
      const caption = "A red circle on a white background.";
      const r = { id: image.id, caption, alt: caption, alt_from: "caption", confidence: 0.9, confident: true, ...extra };
      if (image.alt !== undefined && !("alt_check" in extra)) {
        r.alt_check = image.alt.includes("star") ? { score: -0.3, verdict: "suspect" } : { score: 1.1, verdict: "matches" };
      }
      return r;
    }),
  });
}

const NOTE = "AltCap: the description may not match; appears to be: A red circle on a white background.";

test("the opt-in check: off by default, no author's alt leaves the page", async () => {
  const star = img({ src: "https://example.com/star.png", alt: "A blue star on a white background." });
  const p = page({ elements: [star], worker: checker() });
  await sleep(80);
  p.observers.intersection[0].callback([{ target: star, isIntersecting: true }]);
  await sleep(120);
  assert.equal(describes(p.sent).length, 0);
  assert.equal(star.hasAttribute("aria-description"), false);
});

test("the opt-in check: images in view are sent with their alt; a suspect one gets a note, its alt kept", async () => {
  const star = img({ src: "https://example.com/shape1.png", alt: "A blue star on a white background." });
  const right = img({ src: "https://example.com/shape2.png", alt: "A red circle on a white background." });
  const below = img({ src: "https://example.com/shape3.png", alt: "A green star." }); // never in view
  const none = img({ src: "https://example.com/shape4.png" }); // no alt: described as ever
  const p = page({ elements: [star, right, below, none], worker: checker(), hello: { checkAlt: true } });
  await until(() => none.hasAttribute("alt"));
  assert.equal(describes(p.sent)[0].images.length, 1); // nothing is checked before it is in view
  const io = p.observers.intersection[0];
  io.callback([{ target: star, isIntersecting: true }, { target: right, isIntersecting: true }, { target: below, isIntersecting: false }]);
  await until(() => star.hasAttribute("aria-description"));

  const sent = describes(p.sent);
  assert.equal(sent.length, 2);
  assert.deepEqual(
    Array.from(sent[1].images, (i) => [i.url, i.alt]),
    [
      ["https://example.com/shape1.png", "A blue star on a white background."],
      ["https://example.com/shape2.png", "A red circle on a white background."],
    ],
  ); // one batch
  assert.equal(star.getAttribute("aria-description"), NOTE);
  assert.equal(star.getAttribute("alt"), "A blue star on a white background."); // never touched
  assert.equal(star.hasAttribute("data-altcap"), false);
  assert.equal(right.hasAttribute("aria-description"), false); // "matches": nothing
  assert.equal(below.hasAttribute("aria-description"), false);
  const status = await p.message({ type: "status" });
  assert.deepEqual([status.found, status.described, status.unsure, status.failed], [1, 1, 0, 0]); // checks are not counted

  // In view again, hidden and shown: from the page's cache, never sent twice.
  io.callback([{ target: star, isIntersecting: true }]);
  await p.message({ type: "toggle" });
  assert.equal(star.hasAttribute("aria-description"), false); // hidden with AltCap's descriptions
  assert.equal(star.hasAttribute("data-altcap-note"), false);
  assert.equal(star.getAttribute("alt"), "A blue star on a white background.");
  await p.message({ type: "toggle" });
  assert.equal(star.getAttribute("aria-description"), NOTE);
  await sleep(100);
  assert.equal(describes(p.sent).length, 2);

  // The author fixes the alt: the note goes, and the new alt is checked.
  star.setAttribute("alt", "A red circle.");
  p.observers.mutation[0].callback([{ type: "attributes", target: star, attributeName: "alt" }]);
  assert.equal(star.hasAttribute("aria-description"), false);
  await until(() => describes(p.sent).length === 3);
  assert.deepEqual(Array.from(describes(p.sent)[2].images, (i) => i.alt), ["A red circle."]);
  await sleep(50);
  assert.equal(star.hasAttribute("aria-description"), false);

  // Switched off in the options (the worker tells the frame): the notes go, nothing is sent.
  right.setAttribute("alt", "A yellow star.");
  p.observers.mutation[0].callback([{ type: "attributes", target: right, attributeName: "alt" }]);
  await until(() => right.hasAttribute("aria-description"));
  await p.message({ type: "check-alt", on: false });
  assert.equal(right.hasAttribute("aria-description"), false);
  io.callback([{ target: below, isIntersecting: true }]);
  await sleep(120);
  assert.equal(describes(p.sent).length, 4);
  // And on again: what was answered comes back without a request; what is in view now is sent.
  await p.message({ type: "check-alt", on: true });
  assert.equal(right.getAttribute("aria-description"), "AltCap: the description may not match; appears to be: A red circle on a white background.");
  await until(() => below.hasAttribute("aria-description"));
  assert.equal(describes(p.sent).length, 5);
  assert.deepEqual(Array.from(describes(p.sent)[4].images, (i) => i.alt), ["A green star."]);

  // Put back (the site switched off): every note goes.
  await p.message({ type: "restore" });
  for (const el of [star, right, below]) assert.equal(el.hasAttribute("aria-description"), false);
});

test("the opt-in check: a page's own aria-description is kept; a server that cannot check is asked no more", async () => {
  const own = img({ src: "https://example.com/a.png", alt: "A blue star.", "aria-description": "Our logo" });
  const other = img({ src: "https://example.com/b.png", alt: "A green star." });
  const p = page({ elements: [own, other], worker: checker(), hello: { checkAlt: true } });
  await sleep(60);
  p.observers.intersection[0].callback([{ target: own, isIntersecting: true }]);
  await until(() => describes(p.sent).length === 1);
  await sleep(50);
  assert.equal(own.getAttribute("aria-description"), "Our logo");
  await p.message({ type: "toggle" });
  assert.equal(own.getAttribute("aria-description"), "Our logo"); // not ours to take away

  // A server without the text tower (or not AltCap) answers with no alt_check: no more checks.
  const q = page({
    elements: [img({ src: "https://example.com/c.png", alt: "A blue star." }), other],
    worker: checker({ warnings: ["alt_check_unavailable"], alt_check: undefined }),
    hello: { checkAlt: true },
  });
  await sleep(60);
  const [c] = q.document.elements;
  q.observers.intersection[0].callback([{ target: c, isIntersecting: true }]);
  await until(() => describes(q.sent).length === 1);
  await sleep(50);
  assert.equal(c.hasAttribute("aria-description"), false);
  q.observers.intersection[0].callback([{ target: other, isIntersecting: true }]);
  await sleep(120);
  assert.equal(describes(q.sent).length, 1);
});

test("the opt-in check: a suspect alt beside a caption the server does not believe gets the doubt alone", async () => {
  const star = img({ src: "https://example.com/s.png", alt: "A blue star." });
  const p = page({ elements: [star], worker: checker({ confident: false, alt_check: { score: -1, verdict: "suspect" } }), hello: { checkAlt: true } });
  await sleep(60);
  p.observers.intersection[0].callback([{ target: star, isIntersecting: true }]);
  await until(() => star.hasAttribute("aria-description"));
  assert.equal(star.getAttribute("aria-description"), "AltCap: the description may not match.");
});

test("the opt-in check: the alts noted as possibly not matching are counted and said in the summary", async () => {
  const star = img({ src: "https://example.com/s1.png", alt: "A blue star." });
  const star2 = img({ src: "https://example.com/s2.png", alt: "A green star." });
  const right = img({ src: "https://example.com/r.png", alt: "A red circle." });
  const none = img({ src: "https://example.com/n.png" });
  const p = page({ elements: [star, star2, right, none], worker: checker(), hello: { checkAlt: true } });
  await until(() => none.hasAttribute("alt"));
  const io = p.observers.intersection[0];
  io.callback([star, star2, right].map((target) => ({ target, isIntersecting: true })));
  await until(() => star.hasAttribute("aria-description") && star2.hasAttribute("aria-description"));
  let status = await p.message({ type: "status" });
  assert.deepEqual([status.found, status.described, status.suspect], [1, 1, 2]);
  await sleep(450);
  assert.deepEqual({ ...p.sent.filter((m) => m.type === "counts").at(-1) }, { type: "counts", found: 1, described: 1, failed: 0, unsure: 0, suspect: 2 });

  await p.message({ type: "describe-now" });
  await sleep(200);
  const live = () => p.document.elements.find((e) => e.hasAttribute("data-altcap-live")).textContent;
  assert.equal(live(), "AltCap: 1 image described, 2 descriptions may not match.");

  // The author fixes one: its note goes, and so does its count.
  star2.setAttribute("alt", "A red circle on a white background.");
  p.observers.mutation[0].callback([{ type: "attributes", target: star2, attributeName: "alt" }]);
  assert.equal((await p.message({ type: "status" })).suspect, 1);
  await until(() => describes(p.sent).length === 3);
  await sleep(30);
  assert.equal((await p.message({ type: "status" })).suspect, 1);

  // Hidden with AltCap's descriptions: no note, none counted; shown again: back.
  await p.message({ type: "toggle" });
  assert.equal((await p.message({ type: "status" })).suspect, 0);
  await p.message({ type: "toggle" });
  assert.equal((await p.message({ type: "status" })).suspect, 1);
  // Switched off: nothing counted, nothing said.
  await p.message({ type: "check-alt", on: false });
  assert.equal((await p.message({ type: "status" })).suspect, 0);
  await p.message({ type: "describe-now" });
  await sleep(200);
  assert.equal(live(), "AltCap: 1 image described.");
});

test("the opt-in check: the summary waits for the checks in view, and says them on a page with nothing to describe", async () => {
  const star = img({ src: "https://example.com/s.png", alt: "A blue star." });
  let release;
  const gate = new Promise((resolve) => (release = resolve));
  const slow = checker();
  const p = page({ elements: [star], worker: async (m) => (await gate, slow(m)), hello: { checkAlt: true } });
  await sleep(30);
  p.observers.intersection[0].callback([{ target: star, isIntersecting: true }]); // its check is queued
  const answer = p.message({ type: "describe-now" }); // nothing to describe, one check to wait for
  await sleep(200);
  const region = p.document.elements.find((e) => e.hasAttribute("data-altcap-live"));
  assert.ok(!region || !/no images/.test(region.textContent), region && region.textContent); // not before the check
  release();
  await answer;
  await until(() => star.hasAttribute("aria-description"));
  await sleep(200);
  const live = p.document.elements.find((e) => e.hasAttribute("data-altcap-live"));
  assert.equal(live.textContent, "AltCap: no images without a description on this page; 1 description may not match.");
});

test("a thin banner whose request fails is not counted as could not describe; tried again when asked", async () => {
  const BANNER = { rect: { width: 728, height: 90 } };
  const banner = img({ src: "https://example.com/banner.png" }, BANNER);
  const photo = img({ src: "https://example.com/photo.jpg" });
  let down = true;
  const worker = (message) => ({
    results: message.images.map((image) =>
      down
        ? { id: image.id, error: { code: "server_unreachable", message: "cannot reach the AltCap server" } }
        : image.url.endsWith("banner.png")
          ? { id: image.id, caption: "a sign", text: "FREE SHIPPING", alt: "FREE SHIPPING", alt_from: "text" }
          : { id: image.id, caption: "A cat.", alt: "A cat.", alt_from: "caption" },
    ),
  });
  const p = page({ elements: [banner, photo], worker, auto: false });
  await p.message({ type: "describe-now" });
  await until(async () => (await p.message({ type: "status" })).failed === 1);
  await sleep(50);
  assert.equal(describes(p.sent)[0].images.length, 2); // both were sent
  let status = await p.message({ type: "status" });
  // The photo could not be described; the banner, maybe text and maybe not, is counted nowhere.
  assert.deepEqual([status.found, status.described, status.failed], [1, 0, 1]);
  const live = () => p.document.elements.find((e) => e.hasAttribute("data-altcap-live")).textContent;
  await sleep(200);
  assert.equal(live(), "AltCap: 0 images described, 1 could not be described.");
  // Seen again, it is not sent again by itself ...
  p.observers.intersection[0].callback([{ target: banner, isIntersecting: true }]);
  await sleep(100);
  assert.equal(describes(p.sent).length, 1);

  // ... but on the next "describe now", with the server back, both are.
  down = false;
  await p.message({ type: "describe-now" });
  await until(() => banner.hasAttribute("alt"));
  assert.equal(banner.getAttribute("alt"), "Appears to say: FREE SHIPPING");
  assert.equal(describes(p.sent).length, 2);
  status = await p.message({ type: "status" });
  assert.deepEqual([status.found, status.described, status.failed], [2, 2, 0]);
});

test("with reading text off, thin banners are not sent (they are written only with their text)", async () => {
  const banner = img({ src: "https://example.com/banner.png" }, { rect: { width: 728, height: 90 } });
  const photo = img({ src: "https://example.com/photo.jpg" });
  const p = page({ elements: [banner, photo], worker: captionEach, hello: { readText: false } });
  await until(() => photo.hasAttribute("alt"));
  await p.message({ type: "describe-now", quiet: true });
  await sleep(100);
  assert.deepEqual(describes(p.sent).flatMap((m) => Array.from(m.images, (i) => i.url)), ["https://example.com/photo.jpg"]);
  assert.equal(banner.hasAttribute("alt"), false);
  const status = await p.message({ type: "status" });
  assert.deepEqual([status.found, status.described, status.failed], [1, 1, 0]);
  // "Describe this image" is the user asking: sent and written, banner or not.
  await p.message({ type: "describe-target", srcUrl: "https://example.com/banner.png" });
  assert.equal(banner.getAttribute("alt"), "Appears to be: A picture of banner.png.");
});
