//! Parsers against real and corrupt files: every input gives a document or an error value, never
//! a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lopdf::content::{Content, Operation};
use lopdf::{Document as PdfDocument, Object, Stream, dictionary};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use search::{Format, SearchError, parse::parse};

/// A real two-page PDF with text, written by lopdf.
fn pdf(pages: &[&str]) -> Vec<u8> {
    let mut doc = PdfDocument::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font_id = doc.add_object(dictionary! {
        "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Helvetica",
    });
    let resources_id = doc.add_object(dictionary! { "Font" => dictionary! { "F1" => font_id } });
    let mut kids = Vec::new();
    for text in pages {
        let content = Content {
            operations: vec![
                Operation::new("BT", vec![]),
                Operation::new("Tf", vec!["F1".into(), 12.into()]),
                Operation::new("Td", vec![72.into(), 700.into()]),
                Operation::new("Tj", vec![Object::string_literal(*text)]),
                Operation::new("ET", vec![]),
            ],
        };
        let content_id = doc.add_object(Stream::new(dictionary! {}, content.encode().unwrap()));
        let page_id = doc.add_object(dictionary! {
            "Type" => "Page", "Parent" => pages_id, "Contents" => content_id,
        });
        kids.push(page_id.into());
    }
    let count = kids.len() as i64;
    doc.objects.insert(
        pages_id,
        Object::Dictionary(dictionary! {
            "Type" => "Pages", "Kids" => kids, "Count" => count,
            "Resources" => resources_id, "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
        }),
    );
    let catalog_id = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog_id);
    let mut out = Vec::new();
    doc.save_to(&mut out).unwrap();
    out
}

#[test]
fn a_real_pdf_gives_its_text() {
    let bytes = pdf(&["Refunds are accepted within thirty days.", "Shipping takes five business days."]);
    assert_eq!(Format::detect("terms.pdf", None, &bytes).unwrap(), Format::Pdf);
    let doc = parse(Format::Pdf, &bytes).unwrap();
    let text = doc.text();
    assert!(text.contains("Refunds are accepted within thirty days."), "{text:?}");
    assert!(text.contains("Shipping takes five business days."), "{text:?}");
}

#[test]
fn corrupt_pdfs_are_clean_errors() {
    let good = pdf(&["Some text on a page."]);
    let mut cases: Vec<Vec<u8>> = vec![
        b"%PDF-1.7\n".to_vec(),
        b"%PDF-1.4\n%%EOF".to_vec(),
        good[..good.len() / 2].to_vec(),
        good[..good.len() - 30].to_vec(),
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\nxref\n0 1\ngarbage\ntrailer\n<< /Root 1 0 R >>\nstartxref\n9\n%%EOF".to_vec(),
    ];
    // Random byte flips in the body of a good file.
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..40 {
        let mut b = good.clone();
        for _ in 0..rng.random_range(1..20) {
            let at = rng.random_range(9..b.len());
            b[at] = rng.random();
        }
        cases.push(b);
    }
    let mut errors = 0;
    for (i, bytes) in cases.iter().enumerate() {
        match parse(Format::Pdf, bytes) {
            Ok(_) => {}
            Err(SearchError::Corrupt { format: "pdf", reason }) => {
                assert!(!reason.is_empty(), "case {i}");
                errors += 1;
            }
            Err(other) => panic!("case {i}: unexpected error {other:?}"),
        }
    }
    // The header-only, truncated and broken-xref files cannot parse.
    assert!(errors >= 4, "only {errors} corrupt PDFs were refused");
    let err = parse(Format::Pdf, &good[..good.len() / 2]).unwrap_err();
    assert!(err.to_string().starts_with("the pdf file could not be parsed: "), "{err}");
}

#[test]
fn random_bytes_never_panic_any_parser() {
    let mut rng = StdRng::seed_from_u64(5);
    let seeds: [&[u8]; 5] = [
        b"# Title\n\nText with [a link](http://x) and `code`.\n\n- item\n",
        b"<html><body><h1>T</h1><p>para<b>bold</p><table><tr><td>x</table>",
        b"{\"a\": [1, {\"b\": null}], \"c\": \"d\"}",
        b"plain text\n\nsecond paragraph",
        b"%PDF-1.4\n1 0 obj << >> endobj trailer << /Root 1 0 R >>",
    ];
    for format in [Format::Text, Format::Markdown, Format::Html, Format::Json, Format::Pdf] {
        for seed in seeds {
            for _ in 0..30 {
                let mut b = seed.to_vec();
                for _ in 0..rng.random_range(0..8) {
                    match rng.random_range(0..3) {
                        0 if !b.is_empty() => {
                            let at = rng.random_range(0..b.len());
                            b[at] = rng.random();
                        }
                        1 => {
                            let at = rng.random_range(0..=b.len());
                            b.insert(at, rng.random());
                        }
                        _ if !b.is_empty() => {
                            let at = rng.random_range(0..b.len());
                            b.truncate(at);
                        }
                        _ => {}
                    }
                }
                match parse(format, &b) {
                    Ok(_) | Err(SearchError::Corrupt { .. }) => {}
                    Err(other) => panic!("{format:?}: unexpected error {other:?}"),
                }
            }
        }
    }
}

#[test]
fn unknown_formats_say_what_is_supported() {
    let err = Format::detect("archive.zip", Some("application/zip"), b"PK\x03\x04").unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported file format: `.zip` (archive.zip); supported: .txt, .md, .html, .pdf, .json and text source files"
    );
}
