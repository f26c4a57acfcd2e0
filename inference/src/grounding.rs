//! Grounded chat: the `file_search` extension field of a chat completion request, the sources
//! it retrieves put into the prompt, and the citations of the answer.
//!
//! Pure functions; the service (`InferenceService::ground`) runs the searches between them. The
//! prompt is the caller's conversation with one system message added, right after the caller's
//! own leading system (or developer) messages, so that the caller's instructions come first and
//! the conversation keeps its order:
//!
//! ```text
//! Answer using the sources below, retrieved from the user's documents for this question. …
//!
//! [1] handbook.md
//! <the chunk's text>
//!
//! [2] faq.txt
//! <the chunk's text>
//! ```
//!
//! The answer's `citations` list the same sources by the same numbers.
//!
//! The sources are bounded by the model's context window too ([`fit`]): the best-scored ones
//! are kept, in order, while the prompt with their message plus the call's output reservation
//! fit in it; the others are neither sent nor cited.

use crate::api::{ChatMessage, Extra};
use crate::error::InferenceError;
use crate::rag_api::{
    Citation, FileSearchOptions, SearchResult, SearchResultsPage, VectorStoreId, VectorStoreSearchRequest,
};
use crate::tokens;
use serde_json::Value;
use std::collections::HashSet;

/// The request field (Keel's extension), and the answer field that carries the citations.
pub(crate) const FIELD: &str = "file_search";
pub(crate) const CITATIONS: &str = "citations";
/// Sources put into the prompt when the request does not say.
pub(crate) const DEFAULT_RESULTS: u32 = 5;
/// The most sources a request may ask for (OpenAI's bound for `max_num_results`).
pub(crate) const MAX_RESULTS: u32 = 50;
/// The most stores one request searches: each is a search (and a query embedding) of its own.
pub(crate) const MAX_STORES: usize = 10;

/// The instruction that opens the sources' system message.
pub(crate) const INSTRUCTION: &str = "Answer using the sources below, retrieved from the user's documents for this \
question. Cite each source you use by its number in square brackets, such as [1] or [2][3], right after the \
statement it supports. If the sources do not contain the answer, say so instead of guessing.";

/// The system message when the search found nothing: the model must not present an answer as
/// grounded in documents it was not given.
pub(crate) const NO_SOURCES: &str = "A search of the user's documents found no sources for this question. If \
the answer depends on those documents, say that they contain nothing about it.";

/// The system message when sources were found but not even the best one fits in the model's
/// context window with the conversation and the answer's reservation.
pub(crate) const NONE_FIT: &str = "A search of the user's documents found sources for this question, but they are \
too long to be given to you with this conversation. If the answer depends on those documents, say that you could \
not read them instead of guessing.";

const KEYS: &[&str] = &["vector_store_ids", "max_num_results", "filters", "ranking_options"];

fn invalid(field: &str, message: impl Into<String>) -> InferenceError {
    InferenceError::validation(&format!("{FIELD}.{field}"), message)
}

/// Takes `file_search` out of the request's extra fields (so that it never reaches the
/// provider) and checks it: `None` when absent or null. The store ids are kept in order, without
/// repeats; `max_num_results` is filled in with its default.
///
/// Errors: `invalid_request` with `param` `file_search` or `file_search.<field>`;
/// `vector_store_not_found` for an id that is not a vector store's.
pub(crate) fn take_options(extra: &mut Extra) -> Result<Option<FileSearchOptions>, InferenceError> {
    let object = match extra.remove(FIELD) {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(object)) => object,
        Some(_) => {
            return Err(InferenceError::validation(FIELD, "`file_search` must be an object with `vector_store_ids`."));
        }
    };
    if let Some(key) = object.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(invalid(key, format!("Unknown parameter: `{FIELD}.{key}`.")));
    }
    let ids = match object.get("vector_store_ids") {
        None | Some(Value::Null) => {
            return Err(invalid("vector_store_ids", "Missing required parameter: 'file_search.vector_store_ids'."));
        }
        Some(Value::Array(ids)) => ids,
        Some(_) => return Err(invalid("vector_store_ids", "`vector_store_ids` must be an array of vector store ids.")),
    };
    if ids.is_empty() || ids.len() > MAX_STORES {
        return Err(invalid(
            "vector_store_ids",
            format!("`vector_store_ids` must name 1 to {MAX_STORES} vector stores; it names {}.", ids.len()),
        ));
    }
    let mut vector_store_ids: Vec<String> = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let Some(id) = id.as_str().filter(|s| !s.is_empty()) else {
            return Err(invalid(&format!("vector_store_ids[{i}]"), "A vector store id must be a non-empty string."));
        };
        // Not an id of ours: no such store, answered as the store routes answer it.
        if id.parse::<VectorStoreId>().is_err() {
            return Err(InferenceError::VectorStoreNotFound(id.to_owned()));
        }
        if !vector_store_ids.iter().any(|known| known == id) {
            vector_store_ids.push(id.to_owned());
        }
    }
    let max_num_results = match object.get("max_num_results") {
        None | Some(Value::Null) => DEFAULT_RESULTS,
        Some(value) => match value.as_u64() {
            Some(n @ 1..=50) => n as u32,
            _ => {
                return Err(invalid(
                    "max_num_results",
                    format!("`max_num_results` must be an integer from 1 to {MAX_RESULTS}."),
                ));
            }
        },
    };
    let object_or_null = |key: &str| -> Result<Option<Value>, InferenceError> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(value @ Value::Object(_)) => Ok(Some(value.clone())),
            Some(_) => Err(invalid(key, format!("`{key}` must be an object."))),
        }
    };
    Ok(Some(FileSearchOptions {
        vector_store_ids,
        max_num_results: Some(max_num_results),
        filters: object_or_null("filters")?,
        ranking_options: object_or_null("ranking_options")?,
    }))
}

/// What to search for: the last user message's text. Errors: `invalid_request` (`messages`)
/// when there is none or it has no text.
pub(crate) fn query(messages: &[ChatMessage]) -> Result<String, InferenceError> {
    let text = messages.iter().rev().find(|m| m.role == "user").map(ChatMessage::text).unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        return Err(InferenceError::validation(
            "messages",
            "`file_search` needs a last user message with text: it is the query of the search.",
        ));
    }
    Ok(text.to_owned())
}

/// The search run on each store: the query, and as many results as the whole request keeps
/// (the best of every store compete for them).
pub(crate) fn search_request(query: &str, options: &FileSearchOptions) -> VectorStoreSearchRequest {
    VectorStoreSearchRequest {
        query: Value::String(query.to_owned()),
        max_num_results: Some(options.max_num_results.unwrap_or(DEFAULT_RESULTS)),
        filters: options.filters.clone(),
        ranking_options: options.ranking_options.clone(),
        rewrite_query: None,
    }
}

/// A search's error as the chat request's: a rejected search option is the request's
/// `file_search.<field>`.
pub(crate) fn search_error(error: InferenceError) -> InferenceError {
    match error {
        InferenceError::Validation { field, message } if !field.starts_with(FIELD) => {
            InferenceError::Validation { field: format!("{FIELD}.{field}"), message }
        }
        other => other,
    }
}

/// One source put into the prompt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Source {
    pub citation: Citation,
    pub text: String,
}

fn text_of(result: &SearchResult) -> String {
    result
        .content
        .iter()
        .filter(|part| part.kind == "text")
        .map(|part| part.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sources of a request: the results of every store (`pages`, by store id), best score
/// first, without repeats (the same chunk, or the same text of the same file found through two
/// stores), at most `limit`, numbered from 1.
pub(crate) fn merge(pages: Vec<(String, SearchResultsPage)>, limit: u32) -> Vec<Source> {
    let mut found: Vec<(String, SearchResult)> =
        pages.into_iter().flat_map(|(store, page)| page.data.into_iter().map(move |r| (store.clone(), r))).collect();
    // Stable: equal scores keep the stores' order and each store's ranking.
    found.sort_by(|a, b| b.1.score.total_cmp(&a.1.score));
    let mut chunks = HashSet::new();
    let mut texts = HashSet::new();
    let mut sources = Vec::new();
    for (store, result) in found {
        if sources.len() >= limit as usize {
            break;
        }
        let text = text_of(&result);
        if text.trim().is_empty() {
            continue;
        }
        if !chunks.insert(result.chunk_id.clone()) || !texts.insert((result.file_id.clone(), text.clone())) {
            continue;
        }
        let index = sources.len() as u32 + 1;
        sources.push(Source {
            citation: Citation {
                index,
                vector_store_id: store,
                file_id: result.file_id,
                filename: result.filename,
                chunk_id: result.chunk_id,
                score: result.score,
            },
            text,
        });
    }
    sources
}

/// One source as the sources' message shows it, after the instruction.
fn rendered(source: &Source) -> String {
    format!("\n\n[{}] {}\n{}", source.citation.index, source.citation.filename, source.text.trim())
}

/// The sources that fit in the model's context window: the first of `sources` (best score
/// first, as [`merge`] gives them), as many as keep `prompt_tokens` (the conversation without the
/// sources' message) plus the sources' message within `budget` (the context window less the
/// call's output reservation), both by the estimate the budget hold uses. A prefix, so that a
/// source is never sent while a better one is dropped, and the numbers stay 1, 2, …
pub(crate) fn fit(mut sources: Vec<Source>, prompt_tokens: u64, budget: u64) -> Vec<Source> {
    let mut content = String::from(INSTRUCTION);
    let mut kept = 0;
    for source in &sources {
        content.push_str(&rendered(source));
        if prompt_tokens.saturating_add(tokens::estimate_message(&content)) > budget {
            break;
        }
        kept += 1;
    }
    sources.truncate(kept);
    sources
}

/// The system message that carries the sources and the instruction to cite them; `dropped`
/// sources were found but did not fit.
pub(crate) fn sources_message(sources: &[Source], dropped: usize) -> ChatMessage {
    let content = match (sources.is_empty(), dropped) {
        (true, 0) => NO_SOURCES.to_owned(),
        (true, _) => NONE_FIT.to_owned(),
        (false, _) => {
            let mut content = String::from(INSTRUCTION);
            for source in sources {
                content.push_str(&rendered(source));
            }
            content
        }
    };
    ChatMessage { role: "system".into(), content: Some(Value::String(content)), extra: Extra::new() }
}

/// Puts the sources' message into the conversation, after its leading system and developer
/// messages.
pub(crate) fn insert_sources(messages: &mut Vec<ChatMessage>, sources: &[Source], dropped: usize) {
    let at = messages.iter().position(|m| m.role != "system" && m.role != "developer").unwrap_or(messages.len());
    messages.insert(at, sources_message(sources, dropped));
}

/// The citations of the sources, in their numbers' order.
pub(crate) fn citations(sources: &[Source]) -> Vec<Citation> {
    sources.iter().map(|s| s.citation.clone()).collect()
}

/// Sets the answer's (or a chunk's) `citations` field; a provider's own field of that name is
/// replaced, since the prompt's numbers are Keel's.
pub(crate) fn attach(extra: &mut Extra, citations: &[Citation]) {
    let value = serde_json::to_value(citations).unwrap_or_else(|_| Value::Array(Vec::new()));
    extra.insert(CITATIONS.to_owned(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rag_api::ContentPart;
    use serde_json::json;
    use shared::DomainError;

    fn vs(n: u8) -> String {
        format!("vs_{:032x}", n)
    }

    fn extra(value: Value) -> Extra {
        let mut extra = Extra::new();
        extra.insert(FIELD.into(), value);
        extra.insert("temperature".into(), json!(0.2));
        extra
    }

    fn param(error: InferenceError) -> String {
        match error {
            InferenceError::Validation { field, .. } => field,
            other => panic!("not a validation error: {other:?}"),
        }
    }

    fn result(file: &str, chunk: &str, score: f64, text: &str) -> SearchResult {
        SearchResult {
            file_id: file.into(),
            filename: format!("{file}.md"),
            score,
            attributes: Extra::new(),
            content: vec![ContentPart { kind: "text".into(), text: text.into() }],
            chunk_id: chunk.into(),
        }
    }

    fn page(results: Vec<SearchResult>) -> SearchResultsPage {
        SearchResultsPage {
            object: "vector_store.search_results.page".into(),
            search_query: vec!["q".into()],
            data: results,
            has_more: false,
            next_page: None,
        }
    }

    fn message(role: &str, text: &str) -> ChatMessage {
        ChatMessage { role: role.into(), content: Some(text.into()), extra: Extra::new() }
    }

    #[test]
    fn the_options_are_taken_out_of_the_request_with_their_defaults() {
        let mut fields = extra(json!({"vector_store_ids": [vs(1), vs(2), vs(1)], "filters": {"type": "eq"}}));
        let options = take_options(&mut fields).unwrap().unwrap();
        assert_eq!(options.vector_store_ids, [vs(1), vs(2)], "in order, without repeats");
        assert_eq!(options.max_num_results, Some(DEFAULT_RESULTS));
        assert_eq!(options.filters, Some(json!({"type": "eq"})));
        assert_eq!(options.ranking_options, None);
        assert!(!fields.contains_key(FIELD), "never passed to the provider");
        assert_eq!(fields["temperature"], json!(0.2), "the other fields stay");

        let mut fields = extra(json!({"vector_store_ids": [vs(1)], "max_num_results": 50}));
        assert_eq!(take_options(&mut fields).unwrap().unwrap().max_num_results, Some(50));
        assert_eq!(take_options(&mut extra(Value::Null)).unwrap(), None);
        assert_eq!(take_options(&mut Extra::new()).unwrap(), None);
    }

    #[test]
    fn each_wrong_option_names_its_field() {
        let cases = [
            (json!([vs(1)]), "file_search"),
            (json!({}), "file_search.vector_store_ids"),
            (json!({"vector_store_ids": vs(1)}), "file_search.vector_store_ids"),
            (json!({"vector_store_ids": []}), "file_search.vector_store_ids"),
            (json!({"vector_store_ids": (0..11).map(vs).collect::<Vec<_>>()}), "file_search.vector_store_ids"),
            (json!({"vector_store_ids": [vs(1), 7]}), "file_search.vector_store_ids[1]"),
            (json!({"vector_store_ids": [""]}), "file_search.vector_store_ids[0]"),
            (json!({"vector_store_ids": [vs(1)], "max_num_results": 0}), "file_search.max_num_results"),
            (json!({"vector_store_ids": [vs(1)], "max_num_results": 51}), "file_search.max_num_results"),
            (json!({"vector_store_ids": [vs(1)], "max_num_results": 2.5}), "file_search.max_num_results"),
            (json!({"vector_store_ids": [vs(1)], "filters": "x"}), "file_search.filters"),
            (json!({"vector_store_ids": [vs(1)], "ranking_options": []}), "file_search.ranking_options"),
            (json!({"vector_store_ids": [vs(1)], "max_results": 3}), "file_search.max_results"),
        ];
        for (value, expected) in cases {
            let error = take_options(&mut extra(value.clone())).unwrap_err();
            assert_eq!(error.code(), "invalid_request", "{value}");
            assert_eq!(param(error), expected, "{value}");
        }
        let error = take_options(&mut extra(json!({"vector_store_ids": ["vs_nope"]}))).unwrap_err();
        assert_eq!(error, InferenceError::VectorStoreNotFound("vs_nope".into()));
    }

    #[test]
    fn the_query_is_the_last_user_message() {
        let messages = vec![message("system", "be brief"), message("user", "first"), message("assistant", "ok")];
        assert_eq!(query(&messages).unwrap(), "first");
        let mut messages = messages;
        messages.push(ChatMessage {
            role: "user".into(),
            content: Some(json!([{"type": "text", "text": " refund policy? "}])),
            extra: Extra::new(),
        });
        assert_eq!(query(&messages).unwrap(), "refund policy?");
        assert_eq!(param(query(&[message("user", "  ")]).unwrap_err()), "messages");
        assert_eq!(param(query(&[message("system", "x")]).unwrap_err()), "messages");
    }

    #[test]
    fn sources_are_merged_by_score_without_repeats_and_numbered() {
        let pages = vec![
            (vs(1), page(vec![result("file_a", "c1", 0.9, "alpha"), result("file_a", "c2", 0.4, "beta")])),
            (
                vs(2),
                page(vec![
                    result("file_b", "c3", 0.95, "gamma"),
                    // The same chunk again (the same file in both stores, shared chunk ids).
                    result("file_a", "c1", 0.9, "alpha"),
                    // The same text of the same file under another chunk id.
                    result("file_a", "c9", 0.5, "beta"),
                    result("file_c", "c4", 0.4, "delta"),
                    result("file_d", "c5", 0.3, "   "),
                ]),
            ),
        ];
        let sources = merge(pages.clone(), 10);
        let seen: Vec<(u32, &str, &str, &str)> = sources
            .iter()
            .map(|s| {
                (s.citation.index, s.citation.chunk_id.as_str(), s.citation.vector_store_id.as_str(), s.text.as_str())
            })
            .collect();
        let (one, two) = (vs(1), vs(2));
        assert_eq!(
            seen,
            [
                (1, "c3", two.as_str(), "gamma"),
                (2, "c1", one.as_str(), "alpha"),
                (3, "c9", two.as_str(), "beta"),
                (4, "c4", two.as_str(), "delta")
            ],
            "best first; a tie keeps the stores' order; repeats and empty chunks dropped"
        );
        assert_eq!(sources[0].citation.filename, "file_b.md");
        assert_eq!(sources[0].citation.score, 0.95);

        let sources = merge(pages, 2);
        assert_eq!(sources.iter().map(|s| s.citation.index).collect::<Vec<_>>(), [1, 2], "at most the limit");
        assert!(merge(Vec::new(), 5).is_empty());
    }

    #[test]
    fn the_sources_go_after_the_callers_instructions_numbered_with_their_file_names() {
        let sources = merge(
            vec![(
                vs(1),
                page(vec![
                    result("file_a", "c1", 0.9, "Refunds take 14 days.\n"),
                    result("file_b", "c2", 0.8, "Ask support."),
                ]),
            )],
            5,
        );
        let mut messages = vec![message("system", "be brief"), message("user", "refunds?")];
        insert_sources(&mut messages, &sources, 0);
        assert_eq!(messages.iter().map(|m| m.role.as_str()).collect::<Vec<_>>(), ["system", "system", "user"]);
        assert_eq!(messages[0].text(), "be brief");
        assert_eq!(
            messages[1].text(),
            format!("{INSTRUCTION}\n\n[1] file_a.md\nRefunds take 14 days.\n\n[2] file_b.md\nAsk support.")
        );
        assert_eq!(messages[2].text(), "refunds?");

        let mut messages = vec![message("user", "refunds?")];
        insert_sources(&mut messages, &[], 0);
        assert_eq!(messages[0].role, "system", "first when the caller has no system message");
        assert_eq!(messages[0].text(), NO_SOURCES);
        let mut messages = vec![message("user", "refunds?")];
        insert_sources(&mut messages, &[], 2);
        assert_eq!(messages[0].text(), NONE_FIT, "found, but none fit: not the same as none found");

        let citations = citations(&sources);
        let mut fields = Extra::new();
        fields.insert(CITATIONS.into(), json!(["https://provider.example"]));
        attach(&mut fields, &citations);
        assert_eq!(
            fields[CITATIONS],
            json!([
                {"index": 1, "vector_store_id": vs(1), "file_id": "file_a", "filename": "file_a.md", "chunk_id": "c1", "score": 0.9},
                {"index": 2, "vector_store_id": vs(1), "file_id": "file_b", "filename": "file_b.md", "chunk_id": "c2", "score": 0.8},
            ])
        );
    }

    #[test]
    fn the_best_sources_are_kept_in_order_while_the_prompt_fits_the_budget() {
        let pages = vec![(
            vs(1),
            page(vec![
                result("file_a", "c1", 0.5, &"a".repeat(400)),
                result("file_b", "c2", 0.9, &"b".repeat(40)),
                result("file_c", "c3", 0.7, &"c".repeat(4000)),
                result("file_d", "c4", 0.1, "d"),
            ]),
        )];
        let sources = merge(pages, 10);
        let conversation = vec![message("system", "be brief"), message("user", "refunds?")];
        let prompt = tokens::estimate_messages(&conversation);
        // What the budget hold counts for the conversation with the first `n` sources.
        let with = |n: usize| {
            let mut messages = conversation.clone();
            insert_sources(&mut messages, &sources[..n], 0);
            tokens::estimate_messages(&messages)
        };
        let kept = |budget: u64| -> Vec<String> {
            fit(sources.clone(), prompt, budget).into_iter().map(|s| s.citation.chunk_id).collect()
        };
        assert!(with(2) - with(1) > 1000, "the second best source is the long one");

        assert_eq!(kept(u64::MAX), ["c2", "c3", "c1", "c4"], "best score first");
        assert_eq!(kept(with(4)), ["c2", "c3", "c1", "c4"], "exactly the budget fits");
        assert_eq!(kept(with(4) - 1), ["c2", "c3", "c1"], "one token more does not");
        assert_eq!(kept(with(2)), ["c2", "c3"]);
        assert_eq!(
            kept(with(2) - 1),
            ["c2"],
            "the long source is dropped, and the worse ones after it too, though they are short"
        );
        assert_eq!(kept(with(1)), ["c2"]);
        assert!(kept(with(1) - 1).is_empty());
        assert!(kept(prompt.saturating_sub(1)).is_empty(), "a prompt that does not fit alone gets no sources");
        let numbers: Vec<u32> = fit(sources.clone(), prompt, with(3)).iter().map(|s| s.citation.index).collect();
        assert_eq!(numbers, [1, 2, 3], "the numbers stay those of the prompt");
    }

    #[test]
    fn the_search_asks_each_store_for_the_whole_limit_and_its_errors_name_the_field() {
        let options = FileSearchOptions {
            vector_store_ids: vec![vs(1)],
            max_num_results: Some(7),
            filters: Some(json!({"type": "eq", "key": "k", "value": 1})),
            ranking_options: None,
        };
        let request = search_request("q", &options);
        assert_eq!(request.query, json!("q"));
        assert_eq!(request.max_num_results, Some(7));
        assert_eq!(request.filters, options.filters);
        assert_eq!(param(search_error(InferenceError::validation("filters", "bad"))), "file_search.filters");
        let not_found = InferenceError::VectorStoreNotFound(vs(1));
        assert_eq!(search_error(not_found.clone()), not_found);
    }
}
