// detection.js: classifyAlt against the shared vectors (the Python twin passes the same
// file), every skip rule of assess(), and exact restoring of the page.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import vm from "node:vm";
import { fileURLToPath } from "node:url";

import { FakeDocument, FakeElement, WORDS, ariaImage, img, loadDetection } from "./fake-dom.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const VECTORS = JSON.parse(fs.readFileSync(path.join(here, "../../tests/vectors/alttext.json"), "utf8"));
const LISTS = JSON.parse(fs.readFileSync(path.join(here, "../meaningless-alt.json"), "utf8"));

const D = loadDetection();
D.setMeaninglessWords(LISTS.words, LISTS.stopwords);

test("every shared vector gets the Python verdict", () => {
  assert.ok(VECTORS.cases.length > 20);
  for (const { alt, verdict } of VECTORS.cases) {
    assert.equal(D.classifyAlt(alt), verdict, `alt ${JSON.stringify(alt)}`);
  }
});

test("every shared vector with a src or lang gets the Python verdict, on an element too", () => {
  assert.ok(VECTORS.in_context.length > 20);
  for (const c of VECTORS.in_context) {
    const where = JSON.stringify(c);
    assert.equal(D.classifyAlt(c.alt, c.src, c.lang), c.verdict, where);
    // classifyText() hands classifyAlt the element's src attribute and its nearest lang.
    const parent = c.lang === undefined ? null : new FakeElement("div", { lang: c.lang });
    const attrs = c.src === undefined ? { alt: c.alt } : { alt: c.alt, src: c.src };
    const el = new FakeElement("img", attrs, { parent });
    assert.equal(D.classifyText(el), c.verdict, where);
  }
});

test("the file name decides for images, not for ARIA images, and reaches assess()", () => {
  assert.equal(reason(img({ src: "https://docs.example.com/build-info.png", alt: "build-info" })), "describe:meaningless");
  assert.equal(reason(img({ src: "https://docs.example.com/callouts/1.png", alt: "1" })), "skip:author-alt");
  assert.equal(reason(img({ src: "https://docs.example.com/callouts/1.png", alt: "2" })), "describe:meaningless");
  const button = new FakeElement("input", { type: "image", src: "/img/go-button.png", alt: "go-button" });
  assert.equal(D.classifyText(button), "meaningless");
  // An ARIA image has no src of its own: a src attribute on it is not its picture.
  assert.equal(D.classifyText(ariaImage({ "aria-label": "hero-1", src: "hero-1.png" })), "ok");
});

test("fileName is alttext.py's file_name", () => {
  assert.equal(D.fileName("callouts/1.png"), "1");
  assert.equal(D.fileName(" https://x.example/a/b/build-info.PNG?v=1#top "), "build-info");
  assert.equal(D.fileName("/m/caf%C3%A9%20menu.jpg"), "café menu");
  assert.equal(D.fileName("%E9t%E9.png"), "%E9t%E9"); // Latin-1, not UTF-8: as written
  assert.equal(D.fileName("100%.png"), "100%"); // a malformed escape: as written
  assert.equal(D.fileName("archive.tar.gz"), "archive.tar");
  for (const none of [null, undefined, "", "/docs/build-info", "photo.jpeg2000", ".png", "data:,a.png", "x/"]) {
    assert.equal(D.fileName(none), null, String(none));
  }
});

test("the stopwords are the page language's, by its primary subtag", () => {
  assert.equal(D.classifyAlt("the", null, "en_US"), "meaningless");
  assert.equal(D.classifyAlt("the", null, " EN "), "meaningless");
  assert.equal(D.classifyAlt("der", null, "de-CH"), "meaningless");
  assert.equal(D.classifyAlt("der", null, "en"), "ok");
  assert.equal(D.classifyAlt("the", null, "da"), "ok"); // no list for Danish: none
});

test("the word list is extension/meaningless-alt.json", () => {
  for (const word of WORDS) assert.equal(D.classifyAlt(word), "meaningless", word);
  assert.equal(D.classifyAlt(" Thumbnail! "), "meaningless");
});

test("Python's whitespace and case rules, not JavaScript's", () => {
  assert.equal(D.classifyAlt("\x1c\x85"), "decorative"); // str.isspace(), not in JS \s
  assert.equal(D.classifyAlt("\ufeff"), "meaningless"); // JS \s, but not Python whitespace
  assert.equal(D.classifyAlt("cat.GIF"), "meaningless");
  assert.equal(D.classifyAlt("cat.gıf"), "meaningless"); // re.IGNORECASE: ı matches i
  assert.equal(D.classifyAlt("cat.ſvg"), "meaningless"); // and ſ matches s
  assert.equal(D.classifyAlt("Ⅻ"), "meaningless"); // a number, not a letter
  assert.equal(D.classifyAlt("x²"), "ok");
  assert.equal(D.classifyAlt(undefined), "missing");
});

test("long numbers cost linear work (a page writes the alt)", () => {
  // A backtracking pattern for "word + number" was quadratic: 20,000 digits between two
  // letters took 0.3 s in node, this one ~8 s.
  assert.equal(D.classifyAlt("a" + "1".repeat(100_000) + "x"), "ok");
  assert.equal(D.classifyAlt("image" + " 1".repeat(50_000)), "meaningless"); // a word and numbers only
  assert.equal(D.classifyAlt("image" + " 1".repeat(50_000) + " harbour"), "ok");
  assert.equal(D.classifyAlt("Image " + "1".repeat(100_000)), "meaningless");
  assert.equal(D.classifyAlt("the ".repeat(50_000)), "meaningless");
  assert.equal(D.classifyAlt("1", "%31".repeat(30_000) + ".png"), "meaningless");
});

test("without the word list only the structural rules apply", () => {
  const bare = loadDetection();
  assert.equal(bare.classifyAlt("image"), "ok"); // keeps author text rather than overwrite it
  assert.equal(bare.classifyAlt("the"), "ok");
  assert.equal(bare.classifyAlt("IMG_1.jpg"), "meaningless");
  assert.equal(bare.classifyAlt("build-info", "build-info.png"), "meaningless");
  const wordsOnly = loadDetection();
  wordsOnly.setMeaninglessWords(WORDS); // a "hello" answer without stopwords
  assert.equal(wordsOnly.classifyAlt("image"), "meaningless");
  assert.equal(wordsOnly.classifyAlt("picture of the"), "ok");
});

test("detection.js can be injected twice into one world", () => {
  const context = vm.createContext({});
  loadDetection(context);
  assert.doesNotThrow(() => loadDetection(context));
});

// --- assess / needsDescription ---------------------------------------------------------------

function reason(el, win) {
  const r = D.assess(el, win);
  return r.action === "describe" ? `describe:${r.reason}` : `${r.action}:${r.reason}`;
}

test("images without alt or with meaningless alt are described, with their URL", () => {
  const el = img();
  assert.deepEqual({ ...D.assess(el) }, { action: "describe", reason: "missing", url: "https://example.com/cat.jpg" });
  assert.equal(D.needsDescription(el), true);
  assert.equal(reason(img({ alt: "photo" })), "describe:meaningless");
  assert.equal(reason(img({ alt: "IMG_0042.JPG" })), "describe:meaningless");
});

test("author text and decorative images are kept", () => {
  assert.equal(reason(img({ alt: "" })), "skip:decorative");
  assert.equal(reason(img({ alt: "  " })), "skip:decorative");
  assert.equal(reason(img({ alt: "A dog catching a frisbee" })), "skip:author-alt");
  assert.equal(D.needsDescription(img({ alt: "Jane Doe" })), false);
});

test("presentational roles are skipped", () => {
  assert.equal(reason(img({ role: "presentation" })), "skip:presentational");
  assert.equal(reason(img({ role: "NONE" })), "skip:presentational");
  assert.equal(reason(img({ role: "img" })), "describe:missing");
});

test("aria-hidden on the image or an ancestor skips it", () => {
  assert.equal(reason(img({ "aria-hidden": "true" })), "skip:aria-hidden");
  const grandparent = new FakeElement("div", { "aria-hidden": "TRUE" });
  const parent = new FakeElement("figure", {}, { parent: grandparent });
  assert.equal(reason(img({}, { parent })), "skip:aria-hidden");
  assert.equal(reason(img({ "aria-hidden": "false" })), "describe:missing");
});

test("labels that say something are kept; empty or meaningless ones are not", () => {
  assert.equal(reason(img({ "aria-label": "Sales chart for 2024" })), "skip:aria-label");
  assert.equal(reason(img({ "aria-label": "image" })), "describe:missing");
  assert.equal(reason(img({ "aria-label": "" })), "describe:missing");
  assert.equal(reason(img({ title: "The team in Lisbon" })), "skip:title");
  assert.equal(reason(img({ title: "photo.png" })), "describe:missing");
});

test("aria-labelledby is resolved through the document", () => {
  const doc = new FakeDocument();
  doc.add(new FakeElement("span", { id: "cap1" }, { text: "Our new office" }));
  doc.add(new FakeElement("span", { id: "cap2" }, { text: "picture" }));
  assert.equal(reason(img({ "aria-labelledby": "cap1" }, { doc })), "skip:aria-labelledby");
  assert.equal(reason(img({ "aria-labelledby": "missing cap1" }, { doc })), "skip:aria-labelledby");
  assert.equal(reason(img({ "aria-labelledby": "cap2" }, { doc })), "describe:missing");
  assert.equal(reason(img({ "aria-labelledby": "nothing-here" }, { doc })), "describe:missing");
});

test("size rules: tiny renders, tracking pixels; thin banners are described by their text only", () => {
  assert.equal(reason(img({}, { rect: { width: 15, height: 200 } })), "skip:too-small");
  assert.equal(reason(img({}, { rect: { width: 0, height: 0 } })), "skip:too-small"); // display:none
  assert.equal(reason(img({}, { natural: [1, 1], rect: { width: 300, height: 300 } })), "skip:tracking-pixel");
  const textOnly = (rect, attrs = {}) => D.assess(img(attrs, { rect })).textOnly === true;
  // A thin banner is sent (its text may be read), marked textOnly: no caption alone for it.
  for (const rect of [{ width: 728, height: 90 }, { width: 90, height: 728 }, { width: 800, height: 40 }]) {
    assert.equal(reason(img({}, { rect })), "describe:missing", JSON.stringify(rect));
    assert.equal(textOnly(rect), true, JSON.stringify(rect));
  }
  assert.equal(reason(img({ alt: "banner" }, { rect: { width: 728, height: 90 } })), "describe:meaningless");
  assert.equal(textOnly({ width: 728, height: 90 }, { alt: "banner" }), true);
  assert.equal(reason(img({ alt: "Free shipping" }, { rect: { width: 728, height: 90 } })), "skip:author-alt");
  // Not banners: tall enough, a ratio of 2.5 at most, a square.
  for (const rect of [{ width: 1200, height: 400 }, { width: 250, height: 100 }, { width: 16, height: 16 }]) {
    assert.equal(reason(img({}, { rect })), "describe:missing", JSON.stringify(rect));
    assert.equal(textOnly(rect), false, JSON.stringify(rect));
  }
});

test("loading, broken and URL-less images", () => {
  assert.equal(reason(img({}, { complete: false })), "wait:loading");
  assert.equal(reason(img({}, { natural: [0, 0] })), "skip:broken");
  assert.equal(reason(new FakeElement("img", {})), "skip:no-url");
  assert.equal(reason(img({ src: "file:///home/me/cat.png" })), "skip:unsupported-url");
  assert.equal(reason(img({ src: "data:image/png;base64,AAAA" })), "describe:missing");
});

test("srcset / <picture>: the URL is currentSrc", () => {
  const el = img({ srcset: "cat-2x.jpg 2x" }, { currentSrc: "https://example.com/cat-2x.jpg" });
  assert.equal(D.imageUrl(el), "https://example.com/cat-2x.jpg");
  assert.equal(D.assess(el).url, "https://example.com/cat-2x.jpg");
});

test("input type=image is a candidate; other elements are not", () => {
  const button = new FakeElement("input", { type: "IMAGE", src: "go.png" }, { rect: { width: 40, height: 40 } });
  assert.equal(reason(button), "describe:missing");
  assert.equal(reason(new FakeElement("input", { type: "text" })), "skip:not-an-image");
  assert.equal(reason(new FakeElement("div", {})), "skip:not-an-image");
  assert.equal(reason(null), "skip:not-an-image");
});

test("role=img with a CSS background and no name is described by its background", () => {
  const doc = new FakeDocument();
  const add = (el) => doc.add(el);
  const hero = add(ariaImage());
  assert.equal(reason(hero), "describe:missing");
  assert.equal(D.assess(hero).url, "https://example.com/hero.jpg");
  assert.equal(D.textAttribute(hero), "aria-label");
  assert.equal(reason(add(ariaImage({ "aria-label": "" }))), "describe:missing"); // no name, not decorative
  assert.equal(reason(add(ariaImage({ "aria-label": "image" }))), "describe:meaningless");
  assert.equal(reason(add(ariaImage({ "aria-label": "A harbour at dusk" }))), "skip:aria-label");
  assert.equal(reason(add(ariaImage({ title: "A harbour at dusk" }))), "skip:title");
  assert.equal(reason(add(ariaImage({ role: "IMG presentation" }))), "describe:missing"); // the first role
  assert.equal(reason(add(ariaImage({ role: "presentation img" }))), "skip:not-an-image");
  assert.equal(reason(add(ariaImage({ "aria-hidden": "true" }))), "skip:aria-hidden");
  // the first url() layer, after a gradient; escaped quotes undone
  const layered = add(ariaImage({}, 'linear-gradient(red, blue), url("https://example.com/a\\"b.jpg")'));
  assert.equal(D.assess(layered).url, 'https://example.com/a"b.jpg');
  assert.equal(reason(add(ariaImage({}, "none"))), "skip:no-url"); // an emoji, an icon font, an <svg>
  assert.equal(reason(add(ariaImage({}, "linear-gradient(red, blue)"))), "skip:no-url");
  assert.equal(reason(add(ariaImage({}, 'url("data:image/png;base64,AAAA")'))), "skip:unsupported-url");
  assert.equal(reason(add(ariaImage({}, undefined, { rect: { width: 10, height: 10 } }))), "skip:too-small");
  assert.equal(reason(ariaImage()), "skip:no-url"); // not in a document: no computed style
  // a background without role="img" is decoration as far as the page says
  const plain = add(new FakeElement("div", {}));
  plain.style.backgroundImage = 'url("https://example.com/hero.jpg")';
  assert.equal(reason(plain), "skip:not-an-image");
});

test("visibility:hidden is skipped when a window is given", () => {
  const win = { getComputedStyle: () => ({ visibility: "hidden" }) };
  assert.equal(reason(img(), win), "skip:hidden");
  assert.equal(reason(img(), { getComputedStyle: () => ({ visibility: "visible" }) }), "describe:missing");
});

test("elements already marked data-altcap are left alone", () => {
  assert.equal(reason(img({ "data-altcap": "__none__", alt: "Appears to be: a cat." })), "skip:already-described");
});

// --- marking and restoring -------------------------------------------------------------------

test("apply then restore gives back the page exactly", () => {
  const none = img();
  D.applyCaption(none, "Appears to be: A cat.");
  assert.equal(none.getAttribute("alt"), "Appears to be: A cat.");
  assert.equal(none.getAttribute("data-altcap"), "__none__");
  D.applyCaption(none, "Appears to be: A black cat."); // a second caption keeps the original
  assert.equal(none.getAttribute("data-altcap"), "__none__");
  assert.equal(D.restoreOriginal(none), true);
  assert.equal(none.hasAttribute("alt"), false);
  assert.equal(none.hasAttribute("data-altcap"), false);

  for (const original of ["image", "", "__none__", "__none__x", "\\back", "DSC01.jpg"]) {
    const el = img({ alt: original });
    D.applyCaption(el, "Appears to be: A cat.");
    assert.equal(D.restoreOriginal(el), true);
    assert.equal(el.getAttribute("alt"), original, JSON.stringify(original));
  }
  assert.equal(D.restoreOriginal(img({ alt: "kept" })), false); // not ours: untouched
});

test("an ARIA image gets its caption as aria-label and gives it back exactly", () => {
  const doc = new FakeDocument();
  for (const original of [null, "", "image"]) {
    const el = doc.add(ariaImage(original === null ? {} : { "aria-label": original }));
    D.applyCaption(el, "Appears to be: A harbour.");
    assert.equal(el.getAttribute("aria-label"), "Appears to be: A harbour.");
    assert.equal(el.hasAttribute("alt"), false);
    assert.equal(D.assess(el).reason, "already-described");
    assert.equal(D.restoreOriginal(el), true);
    assert.equal(el.getAttribute("aria-label"), original, JSON.stringify(original));
    assert.equal(el.hasAttribute("data-altcap"), false);
  }
  // The mark says where the text went, so a page that takes the role away later still gets
  // its aria-label back (not an alt it never had); an <img> needs no such note.
  const hero = doc.add(ariaImage());
  D.applyCaption(hero, "Appears to be: A harbour.");
  assert.equal(hero.getAttribute("data-altcap-attribute"), "aria-label");
  hero.setAttribute("role", "presentation");
  assert.equal(D.restoreOriginal(hero), true);
  assert.equal(hero.hasAttribute("aria-label"), false);
  assert.equal(hero.hasAttribute("data-altcap-attribute"), false);
  const picture = img();
  D.applyCaption(picture, "Appears to be: A cat.");
  assert.equal(picture.hasAttribute("data-altcap-attribute"), false);
});

test("the language rule: Python's shared vectors", () => {
  const vectors = JSON.parse(fs.readFileSync(path.join(here, "../../tests/vectors/language.json"), "utf8"));
  for (const { where, text, same } of vectors.cases) {
    assert.equal(D.sameLanguage(where, text), same, `${where} / ${text}`);
  }
});

test("a caption in another language than the image's gets lang, restored exactly", () => {
  const doc = new FakeDocument();
  doc.documentElement.setAttribute("lang", "fr");
  const french = doc.add(img());
  D.applyCaption(french, "Appears to be: A cat.", "en");
  assert.equal(french.getAttribute("lang"), "en");
  assert.equal(french.getAttribute("data-altcap-lang"), "");
  D.applyCaption(french, "Appears to be: A black cat.", "en"); // written again: still once
  assert.equal(french.getAttribute("lang"), "en");
  assert.equal(D.restoreOriginal(french), true);
  assert.equal(french.hasAttribute("lang"), false);
  assert.equal(french.hasAttribute("data-altcap-lang"), false);

  // The nearest lang counts, across a shadow boundary too; no lang anywhere is no language.
  const section = doc.add(new FakeElement("section", { lang: "en-GB" }));
  const british = img({}, { parent: section });
  D.applyCaption(british, "Appears to be: A cat.", "en");
  assert.equal(british.hasAttribute("lang"), false);
  const host = new FakeElement("div", { lang: "en" }, { parent: doc.body });
  const inShadow = host.attachShadow({ mode: "open" }).add(img());
  assert.equal(D.languageOf(inShadow), "en");
  D.applyCaption(inShadow, "Appears to be: A cat.", "en");
  assert.equal(inShadow.hasAttribute("lang"), false);
  const nowhere = img();
  assert.equal(D.languageOf(nowhere), "");
  D.applyCaption(nowhere, "Appears to be: A cat.", "en");
  assert.equal(nowhere.getAttribute("lang"), "en");

  // The image's own lang is the author's: kept. No language given: nothing added.
  const own = doc.add(img({ lang: "es" }));
  D.applyCaption(own, "Appears to be: A cat.", "en");
  assert.equal(own.getAttribute("lang"), "es");
  D.restoreOriginal(own);
  assert.equal(own.getAttribute("lang"), "es");
  const unknown = doc.add(img());
  D.applyCaption(unknown, "Appears to be: A cat.");
  assert.equal(unknown.hasAttribute("lang"), false);

  // The author writes an alt of their own: our mark goes, and the lang we added with it.
  const replaced = doc.add(img());
  D.applyCaption(replaced, "Appears to be: A cat.", "en");
  replaced.setAttribute("alt", "Le chat de la voisine");
  D.dropMark(replaced);
  assert.equal(replaced.hasAttribute("lang"), false);
  assert.equal(replaced.getAttribute("alt"), "Le chat de la voisine");
});

test("encodeOriginal / decodeOriginal round-trip", () => {
  for (const alt of [null, "", "a", "__none__", "\\", "\\__none__", "__none__\\"]) {
    assert.equal(D.decodeOriginal(D.encodeOriginal(alt)), alt);
  }
  assert.equal(D.encodeOriginal(null), "__none__");
  assert.equal(D.encodeOriginal("photo"), "photo");
});

test("captionText joins prefix and caption with one space", () => {
  assert.equal(D.captionText("Appears to be: ", "A cat."), "Appears to be: A cat.");
  assert.equal(D.captionText("Appears to be:", " A cat."), "Appears to be: A cat.");
  assert.equal(D.captionText("", "A cat."), "A cat.");
});

test("urlKind", () => {
  assert.equal(D.urlKind("HTTPS://x/y.png"), "http");
  assert.equal(D.urlKind("data:image/png;base64,AA"), "data");
  assert.equal(D.urlKind("blob:https://x/123"), "blob");
  assert.equal(D.urlKind("javascript:alert(1)"), "");
  assert.equal(D.urlKind("/relative.png"), "");
});

test("assessCheck: images whose author's alt says something, as AltCap would send them (the opt-in check)", () => {
  const check = (el) => {
    const v = D.assessCheck(el);
    return v.action === "check" ? `check:${v.alt}` : `${v.action}:${v.reason}`;
  };
  const src = "https://example.com/team.jpg";
  assert.equal(check(img({ src, alt: "The team in Lisbon" })), "check:The team in Lisbon");
  assert.equal(D.assessCheck(img({ src, alt: "The team in Lisbon" })).url, src);
  assert.equal(check(img({ src, alt: "The team" }, { complete: false })), "wait:loading");
  // Nothing to check: no alt, one that says nothing, decorative, hidden from assistive tech.
  assert.equal(check(img({ src })), "skip:no-author-alt");
  assert.equal(check(img({ src, alt: "IMG_0042.jpg" })), "skip:no-author-alt");
  assert.equal(check(img({ src, alt: "" })), "skip:no-author-alt");
  assert.equal(check(img({ src, alt: "The team", "aria-hidden": "true" })), "skip:aria-hidden");
  // AltCap's own description is never checked; an ARIA image has no alt to check.
  assert.equal(check(img({ src, alt: "Appears to be: A dog.", "data-altcap": "__none__" })), "skip:already-described");
  assert.equal(check(ariaImage({ "aria-label": "A harbour" })), "skip:not-an-image");
  // The size rules of describing: tiny renders, tracking pixels; a thin banner's caption
  // says nothing, so its alt is not checked against one.
  assert.equal(check(img({ src, alt: "Team" }, { rect: { width: 12, height: 12 } })), "skip:too-small");
  assert.equal(check(img({ src, alt: "Team" }, { natural: [1, 1] })), "skip:tracking-pixel");
  assert.equal(check(img({ src, alt: "Free shipping" }, { rect: { width: 728, height: 90 } })), "skip:banner");
  // assess() itself still leaves them alone.
  assert.equal(D.assess(img({ src, alt: "The team in Lisbon" })).reason, "author-alt");
});
