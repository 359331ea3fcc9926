//! The keys of a filter YAML file, as serde structs: each key once, with its aliases. Every
//! value is a [`Node`] or [`Mapping`] that records what was written, so reading never fails on
//! a value's type; `filter.rs` checks the values.

#![forbid(unsafe_code)]

use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use super::yaml::{Field, Mapping, Node};

/// The top level of a filter file: only `config:` is read; other keys are ignored unreported.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct TopLevel {
    pub config: Field<Mapping<Config>>,
}

/// `config:`.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct Config {
    pub name: Field<Node>,
    #[serde(alias = "rootId")]
    pub root_id: Field<Node>,
    pub configuration: Field<Node>,
    pub fail_open: Field<Node>,
    pub failure_policy: Field<Node>,
    pub capability_restriction_config: Field<Mapping<Capabilities>>,
    #[serde(alias = "vmConfig")]
    pub vm_config: Field<Mapping<VmConfig>>,
    pub upstreams: Field<Mapping<Entries>>,
    pub pool_size: Field<Node>,
    pub isolation: Field<Node>,
    pub callback_deadline_ms: Field<Node>,
    pub pause_timeout_ms: Field<Node>,
    pub bodies: Field<Node>,
    pub max_body_bytes: Field<Node>,
    pub cache_transformed: Field<Node>,
    pub snapshot: Field<Node>,
}

/// `config.capability_restriction_config:`.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct Capabilities {
    pub allowed_capabilities: Field<Node>,
}

/// `config.vm_config:`.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct VmConfig {
    pub runtime: Field<Node>,
    #[serde(alias = "vmId")]
    pub vm_id: Field<Node>,
    pub configuration: Field<Node>,
    pub allow_precompiled: Field<Node>,
    pub environment_variables: Field<Mapping<Environment>>,
    pub code: Field<Mapping<Code>>,
}

/// `config.vm_config.environment_variables:`.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct Environment {
    pub host_env_keys: Field<Node>,
    pub key_values: Field<Mapping<Entries>>,
}

/// `config.vm_config.code:`.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct Code {
    pub local: Field<Mapping<Local>>,
}

/// `config.vm_config.code.local:`.
#[derive(Default, Deserialize)]
#[serde(default)]
pub(super) struct Local {
    pub filename: Field<Node>,
}

/// A map whose keys are names the user chooses (`key_values`, `upstreams`), in file order.
#[derive(Default)]
pub(super) struct Entries(pub Vec<(String, Node)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntriesVisitor;
        impl<'de> Visitor<'de> for EntriesVisitor {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Entries(entries))
            }
        }
        d.deserialize_map(EntriesVisitor)
    }
}
