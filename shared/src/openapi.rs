//! Error responses in the OpenAPI document, written from one place so that generated clients
//! get a type for every error the server sends:
//! - [`domain_errors`]: a domain lists, per operation, the codes of its error table it can
//!   answer with; the status and the meaning of each code come from the table itself
//!   (`#[derive(DomainError)]`), so the document cannot drift from the code.
//! - [`platform_errors`]: what every operation can get from the platform, decided from the
//!   operation's shape (a body, a query string, path ids, a bearer requirement), plus the
//!   `default` envelope for anything else (405, 408, 431, ...).

use crate::error::{DomainError, ErrorCode, ErrorKind};
use std::collections::BTreeMap;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};

/// The error codes the platform itself answers with, by status.
const PLATFORM_CODES: &[ErrorCode] = &[
    ErrorCode { code: "invalid_json", kind: ErrorKind::InvalidRequest, description: "The body is not valid JSON." },
    ErrorCode {
        code: "invalid_query",
        kind: ErrorKind::InvalidRequest,
        description: "A query parameter does not parse; `param` names it.",
    },
    ErrorCode {
        code: "unauthenticated",
        kind: ErrorKind::Unauthenticated,
        description: "Missing, invalid, expired or revoked credentials.",
    },
    ErrorCode {
        code: "not_found",
        kind: ErrorKind::NotFound,
        description: "An id in the path has the wrong shape, so it names nothing.",
    },
    ErrorCode {
        code: "payload_too_large",
        kind: ErrorKind::PayloadTooLarge,
        description: "The body is larger than `http.body_limit_bytes`.",
    },
    ErrorCode {
        code: "unsupported_media_type",
        kind: ErrorKind::UnsupportedMediaType,
        description: "The body is not `application/json`.",
    },
    ErrorCode {
        code: "invalid_body",
        kind: ErrorKind::Unprocessable,
        description: "The body does not fit the schema; `param` names the field.",
    },
    ErrorCode {
        code: "internal_error",
        kind: ErrorKind::Internal,
        description: "A bug or an unexpected failure; the cause is in the server log.",
    },
    ErrorCode {
        code: "service_unavailable",
        kind: ErrorKind::Unavailable,
        description: "A database or a remote service is unavailable; retry after `Retry-After` seconds.",
    },
];

/// Documents a domain's own error codes on its operations. `routes` maps an operation id to the
/// codes (from `E::CODES`) it can answer with. Returns the pairs it could not resolve (an
/// unknown operation or code), which the domain's tests assert to be empty.
pub fn domain_errors<E: DomainError>(doc: &mut OpenApi, routes: &[(&str, &[&str])]) -> Vec<String> {
    let mut unresolved = Vec::new();
    let mut seen = Vec::new();
    for (_, item) in doc.paths.paths.iter_mut() {
        for operation in operations(item) {
            let Some(id) = operation.operation_id.clone() else { continue };
            let Some((_, codes)) = routes.iter().find(|(op, _)| *op == id) else { continue };
            seen.push(id.clone());
            let mut found = Vec::new();
            for code in *codes {
                match E::CODES.iter().find(|c| c.code == *code) {
                    Some(entry) => found.push(*entry),
                    None => unresolved.push(format!("{id}: unknown code {code}")),
                }
            }
            add_codes(operation, &found);
        }
    }
    unresolved.extend(routes.iter().filter(|(op, _)| !seen.iter().any(|s| s == op)).map(|(op, _)| op.to_string()));
    unresolved
}

/// Adds what every operation can get from the platform, the `bearer` security scheme (with
/// the declared scopes), the envelope schema, and a description on every response.
pub fn platform_errors(doc: &mut OpenApi, scopes: &crate::scope::Scopes) {
    let by_code = |code: &str| PLATFORM_CODES.iter().find(|c| c.code == code).copied();
    for (_, item) in doc.paths.paths.iter_mut() {
        let path_ids = item.parameters.iter().flatten().any(|p| p.parameter_in == ParameterIn::Path);
        for operation in operations(item) {
            let params = operation.parameters.iter().flatten();
            let query = params.clone().any(|p| p.parameter_in == ParameterIn::Query);
            let path = path_ids || params.clone().any(|p| p.parameter_in == ParameterIn::Path);
            let mut codes: Vec<&str> = vec!["internal_error"];
            if operation.request_body.is_some() {
                codes.extend(["invalid_json", "payload_too_large", "unsupported_media_type", "invalid_body"]);
            }
            if query {
                codes.push("invalid_query");
            }
            if path {
                codes.push("not_found");
            }
            if operation.security.is_some() {
                codes.push("unauthenticated");
            }
            // The gateway's own probes answer without a dependency only for liveness.
            if operation.operation_id.as_deref() != Some("healthz") {
                codes.push("service_unavailable");
            }
            let found: Vec<ErrorCode> = codes.into_iter().filter_map(by_code).collect();
            add_codes(operation, &found);
            let responses = &mut operation.responses.responses;
            responses.entry("default".into()).or_insert_with(|| {
                RefOr::T(envelope("Any other error (405, 408, 431, ...), in the same envelope.".into()))
            });
            for (status, response) in responses.iter_mut() {
                if let RefOr::T(response) = response
                    && response.description.trim().is_empty()
                {
                    response.description = describe_status(status);
                }
            }
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    components.schemas.entry("ErrorEnvelope".into()).or_insert_with(|| {
        use utoipa::PartialSchema;
        crate::error::ErrorEnvelope::schema()
    });
    components.schemas.entry("ErrorBody".into()).or_insert_with(|| {
        use utoipa::PartialSchema;
        crate::error::ErrorBody::schema()
    });
    let listed: Vec<String> = scopes.all().iter().map(|s| format!("`{}`: {}", s.name, s.description)).collect();
    components.add_security_scheme(
        "bearer",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(format!(
                    "A session token (`keel_st_…`) or an API key (`keel_sk_…`). API key scopes: {}.",
                    if listed.is_empty() { "none".to_owned() } else { listed.join("; ") }
                )))
                .build(),
        ),
    );
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch, &mut item.head, &mut item.options]
        .into_iter()
        .flatten()
}

/// Merges `codes` into the operation's responses, one response per status, each listing its codes.
fn add_codes(operation: &mut Operation, codes: &[ErrorCode]) {
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for code in codes {
        by_status.entry(code.kind.status()).or_default().push(*code);
    }
    let responses = &mut operation.responses.responses;
    for (status, codes) in by_status {
        let listed: Vec<String> = codes.iter().map(|c| format!("`{}`: {}", c.code, c.description)).collect();
        let key = status.to_string();
        let description = match responses.get(&key) {
            Some(RefOr::T(existing)) if !existing.description.is_empty() => {
                let new: Vec<&String> = listed.iter().filter(|l| !existing.description.contains(l.as_str())).collect();
                if new.is_empty() {
                    continue;
                }
                format!("{} {}", existing.description, new.into_iter().cloned().collect::<Vec<_>>().join(" "))
            }
            _ => listed.join(" "),
        };
        responses.insert(key, RefOr::T(envelope(description)));
    }
}

fn envelope(description: String) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorEnvelope"))).build())
        .build()
}

fn describe_status(status: &str) -> String {
    match status {
        "200" => "OK.",
        "201" => "Created.",
        "204" => "Done; no content.",
        _ => "See the status code.",
    }
    .to_owned()
}
