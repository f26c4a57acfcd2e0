//! Parsers: bytes of a file → a [`Document`], a list of text blocks (headings and paragraphs) that the
//! chunker uses as preferred cut points.
//!
//! Plain text, Markdown (pulldown-cmark), HTML (html2text, then read as Markdown so that headings
//! stay headings), PDF (pdf-extract, over lopdf) and JSON (serde_json, one block per top-level entry).
//! An unknown format is [`SearchError::UnsupportedFormat`]; a file that is not what it claims to be
//! is [`SearchError::Corrupt`]. No input makes a parser panic its caller: the PDF parser, the one
//! that runs a large third-party decoder over untrusted bytes, additionally runs under
//! `catch_unwind`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use pulldown_cmark::{Event, HeadingLevel, Parser, Tag, TagEnd};

use crate::error::{Result, SearchError};

/// A file format the engine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// UTF-8 text (`.txt`, and source files read as text).
    Text,
    /// CommonMark (`.md`, `.markdown`).
    Markdown,
    /// HTML (`.html`, `.htm`).
    Html,
    /// PDF (`.pdf`).
    Pdf,
    /// JSON (`.json`).
    Json,
}

/// Extensions read as plain text besides `.txt`: the text-like types OpenAI's file search accepts.
const TEXT_EXTENSIONS: &[&str] = &[
    "txt", "text", "csv", "tsv", "log", "rst", "tex", "c", "h", "cc", "cpp", "hpp", "cs", "css", "go", "java", "js",
    "mjs", "ts", "py", "rb", "rs", "php", "sh", "toml", "yaml", "yml", "xml",
];

impl Format {
    /// The format's name as used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Markdown => "markdown",
            Self::Html => "html",
            Self::Pdf => "pdf",
            Self::Json => "json",
        }
    }

    /// The format named by a file name's extension, if it is one the engine reads.
    pub fn from_file_name(name: &str) -> Option<Self> {
        let (_, ext) = name.rsplit_once('.')?;
        let ext = ext.to_ascii_lowercase();
        match ext.as_str() {
            "md" | "markdown" => Some(Self::Markdown),
            "html" | "htm" => Some(Self::Html),
            "pdf" => Some(Self::Pdf),
            "json" => Some(Self::Json),
            e if TEXT_EXTENSIONS.contains(&e) => Some(Self::Text),
            _ => None,
        }
    }

    /// The format named by a MIME type (parameters such as `; charset=utf-8` are ignored).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let mime = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        match mime.as_str() {
            "text/plain" => Some(Self::Text),
            "text/markdown" | "text/x-markdown" => Some(Self::Markdown),
            "text/html" | "application/xhtml+xml" => Some(Self::Html),
            "application/pdf" => Some(Self::Pdf),
            "application/json" => Some(Self::Json),
            _ => None,
        }
    }

    /// Decides the format of an upload: the file name's extension first, then the declared content
    /// type, then the PDF magic number. Anything else is [`SearchError::UnsupportedFormat`].
    pub fn detect(file_name: &str, content_type: Option<&str>, bytes: &[u8]) -> Result<Self> {
        if let Some(format) = Self::from_file_name(file_name) {
            return Ok(format);
        }
        if let Some(format) = content_type.and_then(Self::from_content_type) {
            return Ok(format);
        }
        if trim_start(bytes).starts_with(b"%PDF-") {
            return Ok(Self::Pdf);
        }
        let what = match file_name.rsplit_once('.') {
            Some((_, ext)) if !ext.is_empty() => format!("`.{ext}` ({file_name})"),
            _ => format!("{file_name:?} has no extension"),
        };
        Err(SearchError::UnsupportedFormat(format!(
            "{what}; supported: .txt, .md, .html, .pdf, .json and text source files"
        )))
    }
}

/// What a block of a document is; the chunker prefers to cut before headings, then between
/// paragraphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// A heading, with its level (1 = top).
    Heading(u8),
    /// A paragraph, list item, code block or any other run of text.
    Paragraph,
}

/// One block of a parsed document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Heading or paragraph.
    pub kind: BlockKind,
    /// The block's text, trimmed, never empty.
    pub text: String,
}

/// A parsed document: its text as blocks, in reading order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Document {
    /// The blocks; empty for a document with no text.
    pub blocks: Vec<Block>,
}

impl Document {
    /// The whole text, blocks separated by a blank line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (i, block) in self.blocks.iter().enumerate() {
            if i > 0 {
                out.push_str("\n\n");
            }
            out.push_str(&block.text);
        }
        out
    }

    /// Whether the document holds no text at all.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    fn push(&mut self, kind: BlockKind, text: &str) {
        let text = text.trim();
        if !text.is_empty() {
            self.blocks.push(Block { kind, text: text.to_owned() });
        }
    }
}

/// Parses a file of a known format.
pub fn parse(format: Format, bytes: &[u8]) -> Result<Document> {
    match format {
        Format::Text => Ok(parse_plain(&utf8(format, bytes)?)),
        Format::Markdown => Ok(parse_markdown(&utf8(format, bytes)?)),
        Format::Html => parse_html(bytes),
        Format::Pdf => parse_pdf(bytes),
        Format::Json => parse_json(bytes),
    }
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Text formats must be UTF-8 (a BOM is dropped) and hold no NUL byte, the mark of a binary file.
fn utf8(format: Format, bytes: &[u8]) -> Result<String> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let text = std::str::from_utf8(bytes).map_err(|e| SearchError::Corrupt {
        format: format.name(),
        reason: format!("not UTF-8 text (invalid byte at offset {})", e.valid_up_to()),
    })?;
    if let Some(at) = text.find('\0') {
        return Err(SearchError::Corrupt {
            format: format.name(),
            reason: format!("binary content (NUL byte at offset {at})"),
        });
    }
    Ok(text.replace("\r\n", "\n"))
}

/// Plain text: paragraphs are separated by blank lines.
pub fn parse_plain(text: &str) -> Document {
    let mut doc = Document::default();
    let mut paragraph = String::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            doc.push(BlockKind::Paragraph, &paragraph);
            paragraph.clear();
        } else {
            if !paragraph.is_empty() {
                paragraph.push('\n');
            }
            paragraph.push_str(line.trim_end());
        }
    }
    doc.push(BlockKind::Paragraph, &paragraph);
    doc
}

/// Markdown: headings, paragraphs, list items, code blocks and table rows become blocks; inline
/// markup is dropped, inline code and link text are kept.
pub fn parse_markdown(text: &str) -> Document {
    let mut doc = Document::default();
    let mut buf = String::new();
    let mut heading: Option<u8> = None;
    for event in Parser::new(text) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => {
                doc.push(BlockKind::Paragraph, &buf);
                buf.clear();
                heading = Some(heading_level(level));
            }
            Event::End(TagEnd::Heading(_)) => {
                doc.push(BlockKind::Heading(heading.take().unwrap_or(1)), &buf);
                buf.clear();
            }
            Event::Start(Tag::Item) => {
                doc.push(BlockKind::Paragraph, &buf);
                buf.clear();
                buf.push_str("- ");
            }
            Event::End(
                TagEnd::Paragraph
                | TagEnd::Item
                | TagEnd::CodeBlock
                | TagEnd::BlockQuote(_)
                | TagEnd::TableHead
                | TagEnd::TableRow
                | TagEnd::HtmlBlock,
            ) => {
                let t = buf.trim();
                if t != "-" {
                    doc.push(BlockKind::Paragraph, t);
                }
                buf.clear();
            }
            Event::Text(t) | Event::Code(t) | Event::Html(t) | Event::InlineHtml(t) => {
                buf.push_str(&t);
            }
            Event::SoftBreak | Event::HardBreak => buf.push('\n'),
            Event::End(TagEnd::TableCell) => buf.push_str(" | "),
            _ => {}
        }
    }
    doc.push(BlockKind::Paragraph, &buf);
    doc
}

fn heading_level(level: HeadingLevel) -> u8 {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

/// HTML: html2text renders the text (scripts and styles dropped, headings as `#` lines, no line
/// wrapping), which is then read as Markdown to recover the heading and paragraph structure.
fn parse_html(bytes: &[u8]) -> Result<Document> {
    let rendered = html2text::config::plain()
        .link_footnotes(false)
        .no_link_wrapping()
        .allow_width_overflow()
        .string_from_read(bytes, 10_000)
        .map_err(|e| SearchError::Corrupt { format: Format::Html.name(), reason: e.to_string() })?;
    Ok(parse_markdown(&rendered))
}

/// PDF: pdf-extract's text (it decodes fonts' encodings and ToUnicode maps), read as plain text.
fn parse_pdf(bytes: &[u8]) -> Result<Document> {
    let corrupt = |reason: String| SearchError::Corrupt { format: Format::Pdf.name(), reason };
    if !trim_start(bytes).starts_with(b"%PDF-") {
        return Err(corrupt("missing the %PDF- header".into()));
    }
    let extracted = catch_unwind(AssertUnwindSafe(|| pdf_extract::extract_text_from_mem(bytes)))
        .map_err(|_| corrupt("the PDF decoder gave up on this file".into()))?
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(parse_plain(&extracted.replace('\u{c}', "\n\n")))
}

/// JSON: one block per top-level entry (object key, in sorted order, or array element), each leaf
/// rendered as `path: value` on its own line so that keys stay searchable next to their values.
fn parse_json(bytes: &[u8]) -> Result<Document> {
    let text = utf8(Format::Json, bytes)?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| SearchError::Corrupt { format: Format::Json.name(), reason: e.to_string() })?;
    let mut doc = Document::default();
    match &value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                let mut out = String::new();
                flatten_json(key, v, &mut out);
                doc.push(BlockKind::Paragraph, &out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                let mut out = String::new();
                flatten_json(&format!("[{i}]"), v, &mut out);
                doc.push(BlockKind::Paragraph, &out);
            }
        }
        leaf => {
            let mut out = String::new();
            flatten_json("", leaf, &mut out);
            doc.push(BlockKind::Paragraph, &out);
        }
    }
    Ok(doc)
}

fn flatten_json(path: &str, value: &serde_json::Value, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let child = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                flatten_json(&child, v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten_json(&format!("{path}[{i}]"), v, out);
            }
        }
        leaf => {
            if !out.is_empty() {
                out.push('\n');
            }
            if !path.is_empty() {
                out.push_str(path);
                out.push_str(": ");
            }
            match leaf {
                Value::String(s) => out.push_str(s),
                other => out.push_str(&other.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_formats_by_name_then_type_then_magic() {
        assert_eq!(Format::detect("a.MD", None, b"").unwrap(), Format::Markdown);
        assert_eq!(Format::detect("blob", Some("text/html; charset=utf-8"), b"").unwrap(), Format::Html);
        assert_eq!(Format::detect("blob", None, b"  %PDF-1.7").unwrap(), Format::Pdf);
        let err = Format::detect("photo.png", Some("image/png"), b"\x89PNG").unwrap_err();
        assert!(matches!(err, SearchError::UnsupportedFormat(ref m) if m.contains(".png")));
        assert!(matches!(Format::detect("noext", None, b"hello"), Err(SearchError::UnsupportedFormat(_))));
    }

    #[test]
    fn plain_text_splits_on_blank_lines() {
        let doc = parse(Format::Text, b"\xEF\xBB\xBFone\r\ntwo\r\n\r\n\n  three  \n").unwrap();
        let texts: Vec<_> = doc.blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(texts, ["one\ntwo", "three"]);
    }

    #[test]
    fn markdown_keeps_headings_and_items() {
        let md = "# Title\n\nIntro *text* with `code`.\n\n## Part\n\n- a\n- b\n\n```\nfn x() {}\n```\n";
        let doc = parse(Format::Markdown, md.as_bytes()).unwrap();
        assert_eq!(
            doc.blocks,
            vec![
                Block { kind: BlockKind::Heading(1), text: "Title".into() },
                Block { kind: BlockKind::Paragraph, text: "Intro text with code.".into() },
                Block { kind: BlockKind::Heading(2), text: "Part".into() },
                Block { kind: BlockKind::Paragraph, text: "- a".into() },
                Block { kind: BlockKind::Paragraph, text: "- b".into() },
                Block { kind: BlockKind::Paragraph, text: "fn x() {}".into() },
            ]
        );
    }

    #[test]
    fn html_drops_scripts_and_keeps_headings() {
        let html = b"<html><head><title>t</title><style>p{color:red}</style><script>var x=1;</script></head>
            <body><h1>Refund policy</h1><p>Refunds within <b>30 days</b>.</p><p>Second paragraph.</p></body></html>";
        let doc = parse(Format::Html, html).unwrap();
        let text = doc.text();
        assert!(!text.contains("var x"), "{text}");
        assert!(!text.contains("color:red"), "{text}");
        assert_eq!(doc.blocks[0], Block { kind: BlockKind::Heading(1), text: "Refund policy".into() });
        assert!(doc.blocks.iter().any(|b| b.text == "Refunds within 30 days."), "{doc:?}");
    }

    #[test]
    fn json_flattens_leaves_with_paths() {
        let doc = parse(Format::Json, br#"{"name": "Keel", "tags": ["rust", "rag"], "meta": {"stars": 5}}"#).unwrap();
        let texts: Vec<_> = doc.blocks.iter().map(|b| b.text.as_str()).collect();
        // Object keys come in sorted order (serde_json without `preserve_order`).
        assert_eq!(texts, ["meta.stars: 5", "name: Keel", "tags[0]: rust\ntags[1]: rag"]);
    }

    #[test]
    fn corrupt_inputs_are_errors() {
        assert!(matches!(parse(Format::Text, b"abc\xff\xfe"), Err(SearchError::Corrupt { format: "text", .. })));
        assert!(matches!(parse(Format::Markdown, b"a\0b"), Err(SearchError::Corrupt { .. })));
        assert!(matches!(parse(Format::Json, b"{\"a\": "), Err(SearchError::Corrupt { format: "json", .. })));
        assert!(matches!(parse(Format::Pdf, b"hello"), Err(SearchError::Corrupt { format: "pdf", .. })));
        let err = parse(Format::Pdf, b"%PDF-1.4\n1 0 obj << /Type /Catalog >>\ntrailer").unwrap_err();
        assert!(err.to_string().starts_with("the pdf file could not be parsed"), "{err}");
    }

    #[test]
    fn empty_files_give_empty_documents() {
        for format in [Format::Text, Format::Markdown, Format::Html] {
            assert!(parse(format, b"").unwrap().is_empty());
        }
    }
}
