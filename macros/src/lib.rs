//! `#[derive(DomainError)]`: a domain's error table, declared once on its error enum.
//!
//! Each variant says its error kind and its stable code; the envelope's `param`, the
//! `Retry-After` value and the message come from the variant itself. From that one declaration
//! the derive writes `shared::error::DomainError`: `code()`, `kind()`, `param()`,
//! `retry_after_secs()`, the list of codes for the API documentation, and `from_wire`, which a
//! remote client uses to turn an error envelope back into the same variant.
//!
//! ```ignore
//! #[derive(Debug, thiserror::Error, macros::DomainError)]
//! pub enum AuthError {
//!     /// A field fails validation.
//!     #[error("{message}")]
//!     #[api(kind = Unprocessable, code = "validation_failed")]
//!     Validation { #[api(param)] field: String, message: String },
//!     #[error("An account with this email already exists.")]
//!     #[api(kind = Conflict, code = "email_taken", param = "email")]
//!     EmailTaken,
//!     #[error("auth service unavailable: {0}")]
//!     #[api(kind = Unavailable, code = "service_unavailable", fallback)]
//!     Unavailable(String),
//!     #[error("internal error: {0}")]
//!     #[api(kind = Internal, code = "internal_error", fallback)]
//!     Internal(String),
//! }
//! ```
//!
//! How a field travels back: `#[api(param)]` fields in the envelope's `param`, `#[api(retry_after)]`
//! fields in `Retry-After`, and every other field inside the message, where the variant's
//! `#[error("…")]` template places it (`{name}` or `{0}`). A field that travels nowhere is a
//! compile error. A `fallback` variant (one string field) takes any answer of its kind whose
//! code is unknown or whose fields cannot be read back; one fallback of kind `Unavailable` and one
//! of kind `Internal` are required.

use proc_macro::TokenStream;
use proc_macro2::TokenStream as Tokens;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{Attribute, Data, DeriveInput, Error, Expr, ExprLit, Fields, Ident, Lit, LitStr, Meta, parse_macro_input};

const KINDS: &[&str] = &[
    "InvalidRequest",
    "Unprocessable",
    "Unauthenticated",
    "PermissionDenied",
    "NotFound",
    "MethodNotAllowed",
    "RequestTimeout",
    "Conflict",
    "PayloadTooLarge",
    "UnsupportedMediaType",
    "HeadersTooLarge",
    "RateLimited",
    "Unavailable",
    "Internal",
];

#[proc_macro_derive(DomainError, attributes(api))]
pub fn derive_domain_error(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input).unwrap_or_else(Error::into_compile_error).into()
}

/// Where a field's value comes from when the error is rebuilt from an envelope.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    Param,
    RetryAfter,
    Message,
}

struct Field {
    /// `name` for a named field, `0` for a tuple field.
    key: String,
    /// The binding used in patterns and constructors.
    binding: Ident,
    /// The field's name in a struct variant.
    member: Option<Ident>,
    source: Source,
}

struct Variant {
    ident: Ident,
    kind: Ident,
    code: LitStr,
    param: Option<LitStr>,
    fallback: bool,
    description: String,
    template: Vec<Piece>,
    fields: Vec<Field>,
    named: Option<bool>,
}

enum Piece {
    Lit(String),
    Field(String),
}

fn expand(input: &DeriveInput) -> syn::Result<Tokens> {
    let Data::Enum(data) = &input.data else {
        return Err(Error::new(input.span(), "DomainError is derived for enums only"));
    };
    let variants = data.variants.iter().map(variant).collect::<syn::Result<Vec<_>>>()?;
    let fallback_of = |kind: &str| variants.iter().find(|v| v.fallback && v.kind == kind);
    let (Some(unavailable), Some(internal)) = (fallback_of("Unavailable"), fallback_of("Internal")) else {
        return Err(Error::new(
            input.ident.span(),
            "DomainError needs a `fallback` variant of kind Unavailable and one of kind Internal",
        ));
    };

    let name = &input.ident;
    let patterns: Vec<Tokens> = variants.iter().map(pattern).collect();
    let codes = variants.iter().map(|v| &v.code);
    let kinds = variants.iter().map(|v| kind_path(&v.kind));
    let params = variants.iter().map(|v| {
        if let Some(param) = &v.param {
            return quote!(::core::option::Option::Some(::std::string::String::from(#param)));
        }
        match v.fields.iter().find(|f| f.source == Source::Param) {
            Some(f) => {
                let binding = &f.binding;
                quote!(::core::option::Option::Some(::std::string::ToString::to_string(#binding)))
            }
            None => quote!(::core::option::Option::None),
        }
    });
    let retries = variants.iter().map(|v| match v.fields.iter().find(|f| f.source == Source::RetryAfter) {
        Some(f) => {
            let binding = &f.binding;
            quote!(::core::option::Option::Some(::core::convert::Into::<u64>::into(*#binding)))
        }
        None => quote!(::core::option::Option::None),
    });
    let table = variants.iter().map(|v| {
        let (code, kind, description) = (&v.code, kind_path(&v.kind), &v.description);
        quote!(::shared::error::ErrorCode { code: #code, kind: #kind, description: #description })
    });
    let rebuilds = variants.iter().map(rebuild);
    let unavailable_ctor = construct_fallback(unavailable, quote!(detail));
    let internal_ctor = construct_fallback(internal, quote!(detail));
    let fallback_arms = variants.iter().filter(|v| v.fallback && v.kind != "Internal").map(|v| {
        let kind = kind_path(&v.kind);
        let ctor = construct_fallback(v, quote!(wire.message));
        quote!(#kind => return #ctor,)
    });
    let internal_from_wire = construct_fallback(
        internal,
        quote!(::std::format!("remote service answered {} {}: {}", wire.status, wire.code, wire.message)),
    );

    Ok(quote! {
        impl ::shared::error::DomainError for #name {
            const CODES: &'static [::shared::error::ErrorCode] = &[#(#table),*];

            fn code(&self) -> &'static str {
                match self { #(#patterns => #codes,)* }
            }

            fn kind(&self) -> ::shared::ErrorKind {
                match self { #(#patterns => #kinds,)* }
            }

            fn param(&self) -> ::core::option::Option<::std::string::String> {
                match self { #(#patterns => #params,)* }
            }

            fn retry_after_secs(&self) -> ::core::option::Option<u64> {
                match self { #(#patterns => #retries,)* }
            }

            fn from_wire(wire: ::shared::error::WireError) -> Self {
                #(#rebuilds)*
                match ::shared::ErrorKind::from_status(wire.status) {
                    #(#fallback_arms)*
                    _ => #internal_from_wire,
                }
            }

            fn unavailable(detail: ::std::string::String) -> Self {
                #unavailable_ctor
            }

            fn internal(detail: ::std::string::String) -> Self {
                #internal_ctor
            }
        }
    })
}

fn kind_path(kind: &Ident) -> Tokens {
    quote!(::shared::ErrorKind::#kind)
}

/// `Self::Variant { a, b }`, `Self::Variant(f0)` or `Self::Variant`, binding every field.
fn pattern(v: &Variant) -> Tokens {
    let ident = &v.ident;
    let bindings = v.fields.iter().map(|f| &f.binding);
    match v.named {
        Some(true) => {
            let members = v.fields.iter().map(|f| &f.member);
            quote!(Self::#ident { #(#members: #bindings),* })
        }
        Some(false) => quote!(Self::#ident(#(#bindings),*)),
        None => quote!(Self::#ident),
    }
}

/// The fallback variant built around one string.
fn construct_fallback(v: &Variant, value: Tokens) -> Tokens {
    let ident = &v.ident;
    match (&v.named, v.fields.first()) {
        (Some(true), Some(f)) => {
            let member = &f.member;
            quote!(Self::#ident { #member: #value })
        }
        _ => quote!(Self::#ident(#value)),
    }
}

/// `if wire.code == "…" { if let Some(error) = (|| Some(Self::Variant { … }))() { return error; } }`
fn rebuild(v: &Variant) -> Tokens {
    let code = &v.code;
    let pieces = v.template.iter().map(|piece| match piece {
        Piece::Lit(text) => quote!(::shared::error::TemplatePiece::Lit(#text)),
        Piece::Field(key) => quote!(::shared::error::TemplatePiece::Field(#key)),
    });
    let values = v.fields.iter().map(|f| {
        let key = &f.key;
        let from_message = quote!(::shared::error::field_value(&__found, #key)?.parse().ok()?);
        match f.source {
            Source::Param => quote!(wire.param.as_deref()?.parse().ok()?),
            Source::RetryAfter => quote! {
                match wire.retry_after_secs {
                    ::core::option::Option::Some(secs) => ::core::convert::TryFrom::try_from(secs).ok()?,
                    ::core::option::Option::None => #from_message,
                }
            },
            Source::Message => from_message,
        }
    });
    let ident = &v.ident;
    let constructor = match v.named {
        Some(true) => {
            let members = v.fields.iter().map(|f| &f.member);
            quote!(Self::#ident { #(#members: #values),* })
        }
        Some(false) => quote!(Self::#ident(#(#values),*)),
        None => quote!(Self::#ident),
    };
    quote! {
        if wire.code == #code {
            let rebuilt = (|| -> ::core::option::Option<Self> {
                let __found = ::shared::error::match_template(&[#(#pieces),*], &wire.message)?;
                let _ = &__found;
                ::core::option::Option::Some(#constructor)
            })();
            if let ::core::option::Option::Some(error) = rebuilt {
                return error;
            }
        }
    }
}

fn variant(v: &syn::Variant) -> syn::Result<Variant> {
    let mut kind = None;
    let mut code = None;
    let mut param = None;
    let mut fallback = false;
    for attr in v.attrs.iter().filter(|a| a.path().is_ident("api")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("kind") {
                let ident: Ident = meta.value()?.parse()?;
                if !KINDS.contains(&ident.to_string().as_str()) {
                    return Err(meta.error(format!("unknown kind; one of {}", KINDS.join(", "))));
                }
                kind = Some(ident);
            } else if meta.path.is_ident("code") {
                code = Some(meta.value()?.parse::<LitStr>()?);
            } else if meta.path.is_ident("param") {
                param = Some(meta.value()?.parse::<LitStr>()?);
            } else if meta.path.is_ident("fallback") {
                fallback = true;
            } else {
                return Err(meta.error("expected `kind`, `code`, `param` or `fallback`"));
            }
            Ok(())
        })?;
    }
    let kind = kind.ok_or_else(|| Error::new(v.span(), "missing #[api(kind = …)]"))?;
    let code = code.ok_or_else(|| Error::new(v.span(), "missing #[api(code = \"…\")]"))?;
    if code.value().is_empty() || !code.value().bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
        return Err(Error::new(code.span(), "codes are lowercase snake_case"));
    }
    let message = error_template(&v.attrs)?
        .ok_or_else(|| Error::new(v.span(), "missing #[error(\"…\")] (thiserror): the message template"))?;
    let template = parse_template(&message).map_err(|e| Error::new(v.span(), e))?;

    let (named, raw_fields): (Option<bool>, Vec<&syn::Field>) = match &v.fields {
        Fields::Named(f) => (Some(true), f.named.iter().collect()),
        Fields::Unnamed(f) => (Some(false), f.unnamed.iter().collect()),
        Fields::Unit => (None, Vec::new()),
    };
    let mut fields = Vec::new();
    for (index, field) in raw_fields.iter().enumerate() {
        let mut source = Source::Message;
        for attr in field.attrs.iter().filter(|a| a.path().is_ident("api")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("param") {
                    source = Source::Param;
                } else if meta.path.is_ident("retry_after") {
                    source = Source::RetryAfter;
                } else {
                    return Err(meta.error("expected `param` or `retry_after`"));
                }
                Ok(())
            })?;
        }
        let (key, member) = match &field.ident {
            Some(ident) => (ident.to_string(), Some(ident.clone())),
            None => (index.to_string(), None),
        };
        let in_template = template.iter().any(|p| matches!(p, Piece::Field(k) if *k == key));
        if source == Source::Message && !in_template && !fallback {
            return Err(Error::new(
                field.span(),
                format!(
                    "field `{key}` travels nowhere: place it in the #[error] template, or mark it #[api(param)] or #[api(retry_after)]"
                ),
            ));
        }
        fields.push(Field { binding: format_ident!("__f_{}", key), key, member, source });
    }
    if fallback && fields.len() != 1 {
        return Err(Error::new(v.span(), "a fallback variant has exactly one (string) field"));
    }
    let description = doc_summary(&v.attrs).unwrap_or_else(|| message.clone());
    Ok(Variant { ident: v.ident.clone(), kind, code, param, fallback, description, template, fields, named })
}

/// The string of thiserror's `#[error("…")]`, if any.
fn error_template(attrs: &[Attribute]) -> syn::Result<Option<String>> {
    for attr in attrs.iter().filter(|a| a.path().is_ident("error")) {
        let Meta::List(list) = &attr.meta else { continue };
        let first = list.parse_args_with(|input: syn::parse::ParseStream| {
            let lit: LitStr = input.parse()?;
            // Extra format arguments (`#[error("{}", .x)]`) cannot be read back.
            if !input.is_empty() {
                return Err(input.error("DomainError reads `#[error(\"…\")]` templates without extra arguments"));
            }
            Ok(lit)
        })?;
        return Ok(Some(first.value()));
    }
    Ok(None)
}

/// The first line of the variant's doc comment.
fn doc_summary(attrs: &[Attribute]) -> Option<String> {
    attrs.iter().filter(|a| a.path().is_ident("doc")).find_map(|a| match &a.meta {
        Meta::NameValue(nv) => match &nv.value {
            Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => {
                let line = s.value().trim().to_owned();
                (!line.is_empty()).then_some(line)
            }
            _ => None,
        },
        _ => None,
    })
}

/// Splits a format string into literal text and `{field}` / `{0}` placeholders.
fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed `{{` in {template:?}")),
                    }
                }
                // `{x:?}` and other specs print something that cannot be parsed back reliably.
                if name.is_empty() || name.contains(':') || name.starts_with('.') {
                    return Err(format!("placeholder {{{name}}} in {template:?}: use plain {{field}} or {{0}}"));
                }
                if !text.is_empty() {
                    pieces.push(Piece::Lit(std::mem::take(&mut text)));
                }
                if matches!(pieces.last(), Some(Piece::Field(_))) {
                    return Err(format!("two placeholders without text between them in {template:?}"));
                }
                pieces.push(Piece::Field(name));
            }
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Lit(text));
    }
    Ok(pieces)
}
