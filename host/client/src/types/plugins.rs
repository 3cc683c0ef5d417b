//! Plugins: the registry's record of an uploaded component.

use kanon_gate::Manifest;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A registered plugin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct PluginRecord {
    /// blake3 of the component, hex: what approvals name.
    pub hash: String,
    pub size: usize,
    /// What it declares it reads, emits and takes as parameters.
    #[schema(value_type = Object)]
    pub manifest: Manifest,
    /// The first uploader's role and name. Analysts and vendors see it only
    /// when it is their own (empty otherwise).
    pub uploader: String,
    pub uploaded_ms: u64,
    /// Who else uploaded the same bytes since, by role and name: they see
    /// the plugin too. Served to tenant admins only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_uploaded_by: Vec<String>,
}

impl PluginRecord {
    /// Whether `who` (a role and name) uploaded these bytes.
    pub fn uploaded_by(&self, who: &str) -> bool {
        self.uploader == who || self.also_uploaded_by.iter().any(|u| u == who)
    }

    /// The record as an analyst or vendor `who` may see it: no other
    /// uploader's name.
    pub fn seen_by(mut self, who: &str) -> Self {
        if self.uploader != who {
            self.uploader = if self.uploaded_by(who) { who.to_owned() } else { String::new() };
        }
        self.also_uploaded_by.clear();
        self
    }
}
