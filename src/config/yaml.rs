//! Reading a filter YAML file with serde-saphyr into `schema.rs`'s structs, whose values are
//! [`Node`]s and [`Mapping`]s that record what was written and never fail on a value's type.
//! Checking the values, in a fixed order and with one-line errors, is `filter.rs`'s job.
//!
//! Three things here go beyond plain serde, each to keep an error text or a value the plugin
//! has always produced:
//! - scalars are typed the way the plugin's previous YAML reader (yaml-rust2 0.13's core schema)
//!   typed them, from their written text: `010` is an integer, `1.50` a number that reads as the
//!   string `1.50`, `Null` and `yes` are strings;
//! - a [`Field`] keeps the key as written, so errors under `vmConfig:` say `config.vmConfig…`;
//! - a [`Map`] keeps its first key that is not a string and the keys its struct does not know.

#![forbid(unsafe_code)]

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::value::MapAccessDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::limits::{MAX_REPLAYED_EVENTS, MAX_TEXT_BYTES, MAX_VALUES};

/// A key's value and the key as written (one of its aliases, say), `None` when absent.
#[derive(Default)]
pub(super) struct Field<T> {
    pub key: Option<String>,
    pub value: T,
}

impl<T> Field<T> {
    /// The path of this key under `parent`, spelled as written (`name` when absent).
    pub fn path(&self, parent: &str, name: &str) -> String {
        format!("{parent}.{}", self.key.as_deref().unwrap_or(name))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // `KeyCheck::next_value_seed` left the key it just read; take it before the value's
        // own keys replace it.
        let key = READING.with(|r| r.borrow_mut().key.take());
        Ok(Field { key, value: T::deserialize(d)? })
    }
}

/// One YAML value where a plain value (or a list of them) belongs.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) enum Node {
    /// The key is not there.
    #[default]
    Absent,
    /// `~`, `null` or nothing.
    Null,
    /// `true` or `false` (also `True`, `TRUE`, …).
    Bool(bool),
    /// A whole number that fits an `i64` (also `0x1F`, `0o17`, `+5`, `010`).
    Integer(i64),
    /// Any other number, as written.
    Real(String),
    /// A string.
    Str(String),
    /// A sequence.
    List(Vec<Node>),
    /// A map (its contents are never needed where a plain value belongs).
    Map,
}

impl Node {
    /// The node's type for error messages: `an integer`, `a list`, …
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Absent => "nothing",
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Integer(_) => "an integer",
            Node::Real(_) => "a number",
            Node::Str(_) => "a string",
            Node::List(_) => "a list",
            Node::Map => "a map",
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (parsed, written) = read::<D, Skipped>(d)?;
        Ok(parsed.into_node(&written, |Skipped| Node::Map))
    }
}

/// A value that should be a map whose keys `M` reads.
#[derive(Default)]
pub(super) enum Mapping<M> {
    /// The key is not there.
    #[default]
    Absent,
    /// `~`, `null` or nothing.
    Null,
    /// A map.
    Map(Map<M>),
    /// Anything else, by its type (`a list`, …).
    Other(&'static str),
}

/// A map read by `M`, and what `M` did not take.
pub(super) struct Map<M> {
    /// Its known keys.
    pub fields: M,
    /// The type of its first key that is not a string (`an integer`, …), if any.
    pub non_string_key: Option<&'static str>,
    /// Its string keys that `M` does not know, as written, in file order.
    pub unknown_keys: Vec<String>,
}

impl<'de, M: Deserialize<'de>> Deserialize<'de> for Mapping<M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (parsed, written) = read::<D, Map<M>>(d)?;
        Ok(match parsed {
            Parsed::Map(map) => Mapping::Map(map),
            other => match other.into_node(&written, |_| Node::Map) {
                Node::Null => Mapping::Null,
                node => Mapping::Other(node.kind()),
            },
        })
    }
}

/// What a YAML map turns into while it is read.
trait ReadMap<'de>: Sized {
    fn read<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

/// A map read only to get past it.
struct Skipped;

impl<'de> ReadMap<'de> for Skipped {
    /// Keys as `IgnoredAny`, values as nodes: an ignored value would count as an unknown key.
    fn read<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_key::<de::IgnoredAny>()?.is_some() {
            map.next_value::<Node>()?;
        }
        Ok(Skipped)
    }
}

impl<'de, M: Deserialize<'de>> ReadMap<'de> for Map<M> {
    fn read<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        let mut checked = KeyCheck { inner: map, non_string_key: None, unknown_keys: Vec::new(), key: None };
        let fields = M::deserialize(MapAccessDeserializer::new(&mut checked))?;
        Ok(Map { fields, non_string_key: checked.non_string_key, unknown_keys: checked.unknown_keys })
    }
}

/// A node as serde-saphyr typed it (YAML 1.2 core schema), its maps read as `M`.
enum Parsed<M> {
    Null,
    Bool(bool),
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Str(String),
    List(Vec<Node>),
    Map(M),
}

/// How a scalar was written: its text, and whether it was plain (no quotes, tag or block
/// indicator). `None` when the parser gave no position.
type Written = Option<(String, bool)>;

/// Reads one node and, for a scalar, how it was written (from serde-saphyr's span).
fn read<'de, D: Deserializer<'de>, M: ReadMap<'de>>(d: D) -> Result<(Parsed<M>, Written), D::Error> {
    let top = READING.with(|r| {
        let mut r = r.borrow_mut();
        r.depth += 1;
        r.depth == 1
    });
    let spanned = Spanned::<Parsed<M>>::deserialize(d);
    READING.with(|r| r.borrow_mut().depth -= 1);
    let spanned = spanned?;
    // What aliases expand to is built here, node by node: bound it (serde-saphyr bounds the
    // number of replayed events, not the bytes of the scalars they repeat).
    let text = match &spanned.value {
        Parsed::Str(s) => s.len(),
        _ => 0,
    };
    READING.with(|r| r.borrow_mut().charge(text, top.then(|| spanned.defined.line()))).map_err(de::Error::custom)?;
    let span = spanned.defined.span();
    let written = match (&spanned.value, span.byte_offset(), span.byte_len()) {
        (Parsed::List(_) | Parsed::Map(_), _, _) => None,
        (_, Some(at), Some(len)) => READING.with(|r| {
            let source = &r.borrow().source;
            let (at, len) = (usize::try_from(at).ok()?, usize::try_from(len).ok()?);
            let text = source.get(at..at.checked_add(len)?)?;
            Some((text.to_owned(), is_plain(&source[..at])))
        }),
        _ => None,
    };
    Ok((spanned.value, written))
}

/// Whether the scalar after `before` has no tag (`!!str`, `!x`) or block indicator (`|`, `>`)
/// in front of it (an anchor `&a` may stand between).
fn is_plain(before: &str) -> bool {
    let mut tokens = before.rsplit(char::is_whitespace).filter(|t| !t.is_empty());
    let mut token = tokens.next().unwrap_or("").trim_start_matches(['[', '{', ',']);
    if token.starts_with('&') {
        token = tokens.next().unwrap_or("").trim_start_matches(['[', '{', ',']);
    }
    !token.starts_with(['!', '|', '>'])
}

impl<M> Parsed<M> {
    /// The node, scalars typed as yaml-rust2 typed their written text; a map becomes `map(m)`.
    fn into_node(self, written: &Written, map: impl FnOnce(M) -> Node) -> Node {
        match (self, written) {
            (Parsed::List(items), _) => Node::List(items),
            (Parsed::Map(m), _) => map(m),
            // Quoted, tagged and block strings stay strings; a plain one may be a number to
            // yaml-rust2 that is not one to serde-saphyr (`0x-1`).
            (Parsed::Str(s), Some((text, true))) if *text == s => plain_scalar(text),
            (Parsed::Str(s), _) => Node::Str(s),
            (_, Some((text, _))) => plain_scalar(text),
            (Parsed::Null, None) => Node::Null,
            (Parsed::Bool(b), None) => Node::Bool(b),
            (Parsed::Signed(i), None) => Node::Integer(i),
            (Parsed::Unsigned(u), None) => i64::try_from(u).map_or_else(|_| Node::Real(u.to_string()), Node::Integer),
            (Parsed::Float(f), None) => Node::Real(f.to_string()),
        }
    }
}

/// yaml-rust2 0.13's typing of an untagged plain scalar (its `Yaml::from_str`).
fn plain_scalar(v: &str) -> Node {
    let radix = |digits: &str, radix| i64::from_str_radix(digits, radix).ok().map(Node::Integer);
    let prefixed = if let Some(hex) = v.strip_prefix("0x") {
        radix(hex, 16)
    } else if let Some(octal) = v.strip_prefix("0o") {
        radix(octal, 8)
    } else if let Some(decimal) = v.strip_prefix('+') {
        decimal.parse().ok().map(Node::Integer)
    } else {
        None
    };
    if let Some(node) = prefixed {
        return node;
    }
    match v {
        "" | "~" | "null" => Node::Null,
        "true" | "True" | "TRUE" => Node::Bool(true),
        "false" | "False" | "FALSE" => Node::Bool(false),
        _ => match v.parse::<i64>() {
            Ok(i) => Node::Integer(i),
            Err(_) if is_real(v) => Node::Real(v.to_owned()),
            Err(_) => Node::Str(v.to_owned()),
        },
    }
}

/// Whether yaml-rust2 reads `v` as a float (its `parse_f64`).
fn is_real(v: &str) -> bool {
    matches!(v, ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" | "-.inf" | "-.Inf" | "-.INF")
        || matches!(v, ".nan" | ".NaN" | ".NAN")
        || (v.bytes().any(|b| b.is_ascii_digit()) && v.parse::<f64>().is_ok())
}

impl<'de, M: ReadMap<'de>> Deserialize<'de> for Parsed<M> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ParsedVisitor(PhantomData))
    }
}

struct ParsedVisitor<M>(PhantomData<M>);

impl<'de, M: ReadMap<'de>> Visitor<'de> for ParsedVisitor<M> {
    type Value = Parsed<M>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E>(self) -> Result<Parsed<M>, E> {
        Ok(Parsed::Null)
    }
    fn visit_none<E>(self) -> Result<Parsed<M>, E> {
        Ok(Parsed::Null)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Parsed<M>, E> {
        Ok(Parsed::Bool(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Parsed<M>, E> {
        Ok(Parsed::Unsigned(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Parsed<M>, E> {
        Ok(Parsed::Signed(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Parsed<M>, E> {
        Ok(Parsed::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Parsed<M>, E> {
        Ok(Parsed::Str(v.to_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed<M>, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Parsed::List(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Parsed<M>, A::Error> {
        M::read(map).map(Parsed::Map)
    }
}

/// Passes a map's string keys on to `M`, notes the first other key (skipping its entry) and
/// the keys `M` skips as unknown, and hands each key as written to the next [`Field`].
///
/// Ours rather than `serde_ignored`'s wrapper: that one fails on a null or list key ("non-string
/// key") before the map's own error can be reported, and gives paths to take apart again,
/// where this keeps each map's unknown keys with the map.
struct KeyCheck<A> {
    inner: A,
    non_string_key: Option<&'static str>,
    unknown_keys: Vec<String>,
    key: Option<String>,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for &mut KeyCheck<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let mut seed = seed;
        loop {
            match self.inner.next_key_seed(StringKey(seed))? {
                None => return Ok(None),
                Some(Ok((value, written))) => {
                    self.key = Some(written);
                    return Ok(Some(value));
                }
                Some(Err((unused, kind))) => {
                    self.non_string_key.get_or_insert(kind);
                    self.inner.next_value::<Node>()?;
                    seed = unused;
                }
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, A::Error> {
        let key = self.key.take().unwrap_or_default();
        READING.with(|r| r.borrow_mut().key = Some(key.clone()));
        let mut skipped = false;
        let value = self.inner.next_value_seed(Watch { inner: seed, skipped: &mut skipped })?;
        if skipped {
            self.unknown_keys.push(key);
        }
        Ok(value)
    }
}

/// Reads a key: a string goes to the seed (with its text); anything else gives the seed back
/// with the key's type.
struct StringKey<K>(K);

impl<'de, K: DeserializeSeed<'de>> DeserializeSeed<'de> for StringKey<K> {
    type Value = Result<(K::Value, String), (K, &'static str)>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let (parsed, written) = read::<D, Skipped>(d)?;
        match parsed.into_node(&written, |Skipped| Node::Map) {
            Node::Str(key) => Ok(Ok((self.0.deserialize(key.as_str().into_deserializer())?, key))),
            other => Ok(Err((self.0, other.kind()))),
        }
    }
}

/// A map value's seed and deserializer, noting whether the struct skipped the value: serde's
/// derived structs ask for `deserialize_ignored_any` exactly for the keys they do not have.
struct Watch<'a, T> {
    inner: T,
    skipped: &'a mut bool,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Watch<'_, S> {
    type Value = S::Value;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<S::Value, D::Error> {
        self.inner.deserialize(Watch { inner: d, skipped: self.skipped })
    }
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Watch<'_, D> {
    type Error = D::Error;
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_any(visitor)
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        *self.skipped = true;
        self.inner.deserialize_ignored_any(visitor)
    }
    // serde-saphyr recognises its `Spanned` (in `read`) by the newtype's name.
    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_newtype_struct(name, visitor)
    }
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.inner.deserialize_map(visitor)
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct seq tuple tuple_struct struct enum identifier
    }
}

/// What the reading of one file shares with the nodes it builds (serde passes a value no
/// context of its own): the text, for written scalars, the key just read, for [`Field`], what
/// was built so far (for the bounds) and where each document starts.
#[derive(Default)]
struct Reading {
    source: String,
    key: Option<String>,
    depth: usize,
    values: usize,
    text_bytes: usize,
    documents: Vec<u64>,
}

impl Reading {
    /// Counts one value with `text` bytes of scalar text (and the line of a document's top
    /// value); an error once the file expands past [`MAX_VALUES`] or [`MAX_TEXT_BYTES`].
    fn charge(&mut self, text: usize, document_line: Option<u64>) -> Result<(), String> {
        self.values += 1;
        self.text_bytes = self.text_bytes.saturating_add(text);
        self.documents.extend(document_line);
        if self.values > MAX_VALUES {
            return Err(format!("the file expands to more than {MAX_VALUES} values (aliases included)"));
        }
        if self.text_bytes > MAX_TEXT_BYTES {
            return Err(format!(
                "the file expands to more than {} MiB of text (aliases included)",
                MAX_TEXT_BYTES >> 20
            ));
        }
        Ok(())
    }
}

thread_local! {
    static READING: RefCell<Reading> = RefCell::new(Reading::default());
}

/// A filter file's first document, and where the documents after it (ignored) start.
pub(super) struct Loaded<T> {
    /// The first document (`None` if the file has none).
    pub first: Option<Mapping<T>>,
    /// The first line of each further document that is not empty, in file order.
    pub ignored: Vec<u64>,
}

/// Parses `text` (a filter file: `T` is its top level, `schema::TopLevel`): all its documents
/// must parse; the first is used. Errors are the parser's (syntax, a duplicate key, a key given
/// under two of its names, a budget below), one line with the position.
///
/// Bounds, so a small file cannot take the host's memory or time ("billion laughs"): at most
/// [`MAX_REPLAYED_EVENTS`] alias replays, [`MAX_VALUES`] values and [`MAX_TEXT_BYTES`] of
/// scalar text built (aliases expanded), 1,000 anchors, 64 levels of nesting, 64 documents.
/// ([`MAX_FILE_BYTES`](super::limits::MAX_FILE_BYTES) is checked by the caller, which reads the file.)
pub(super) fn load<T: serde::de::DeserializeOwned>(text: &str) -> Result<Loaded<T>, String> {
    READING.with(|r| *r.borrow_mut() = Reading { source: text.to_owned(), ..Reading::default() });
    let mut options = serde_saphyr::Options::default();
    // As yaml-rust2: only true/false (any case) are booleans, `<<` is an ordinary key, `1_000`
    // is a string, `.inf` a number; and one-line errors, without a source snippet.
    options.strict_booleans = true;
    options.merge_keys = serde_saphyr::options::MergeKeyPolicy::AsOrdinary;
    options.underscored_numbers_as_strings = true;
    options.non_finite_float_policy = serde_saphyr::options::NonFiniteFloatPolicy::PassThrough;
    options.with_snippet = false;
    options.alias_limits.max_total_replayed_events = MAX_REPLAYED_EVENTS;
    // serde-saphyr's counts (with what it skips for us) are a backstop at twice ours.
    let mut budget = options.budget.take().unwrap_or_default();
    budget.max_nodes = 2 * MAX_VALUES;
    budget.max_aliases = MAX_REPLAYED_EVENTS;
    budget.max_anchors = 1_000;
    budget.max_documents = 64;
    budget.max_total_scalar_bytes = 2 * MAX_TEXT_BYTES;
    options.budget = Some(budget);
    let docs = serde_saphyr::from_multiple_with_options::<Mapping<T>>(text, options);
    let reading = READING.with(|r| std::mem::take(&mut *r.borrow_mut()));
    let docs = docs.map_err(|e| format!("malformed YAML: {}", e.to_string().replace('\n', " ")))?;
    let ignored = reading.documents.iter().skip(1).copied().collect();
    // serde-saphyr leaves out null documents; a file that has one (`---`, `~`) is not empty
    // but a null top level, as yaml-rust2 read it.
    let first = docs.into_iter().next().or_else(|| has_document(text).then_some(Mapping::Null));
    Ok(Loaded { first, ignored })
}

/// Whether `text` has more than blank lines, comments, directives and document ends.
fn has_document(text: &str) -> bool {
    text.lines()
        .map(|l| l.trim_start_matches('\u{feff}').trim())
        .any(|l| !(l.is_empty() || l.starts_with('#') || l.starts_with('%') || l == "..." || l.starts_with("... ")))
}
