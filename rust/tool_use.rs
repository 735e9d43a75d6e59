//! The `tool_use` blocks of one answer: how each call's arguments were healed, their repair by the offered tool's
//! schema, and ids that are unique within the message.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::heal::HealKind;
use crate::schema::{Repair, ToolSet};

/// The tool calls of one message so far, and their counters.
#[derive(Debug, Default)]
pub struct ToolUses {
    /// The offered tools; `None` when the request offered none (no schema repair, no text calls).
    tools: Option<Arc<ToolSet>>,
    /// The ids given out so far, in order.
    ids: Vec<String>,
    /// Calls by healing step ([`HealKind::index`]).
    heal_counts: [u64; 4],
    /// Repaired fields by kind ([`Repair::index`]).
    repair_counts: [u64; 3],
    /// Calls recovered from text.
    text_call_count: u64,
    /// Created on first use: most tool calls come with a usable id.
    rng: Option<fastrand::Rng>,
}

impl ToolUses {
    /// The tool calls of a message whose request offered `tools` (an empty set counts as none).
    pub fn new(tools: Option<ToolSet>) -> Self {
        Self {
            tools: tools.filter(|tools| !tools.is_empty()).map(Arc::new),
            ..Self::default()
        }
    }

    /// The offered tools, if any.
    pub fn tools(&self) -> Option<&Arc<ToolSet>> {
        self.tools.as_ref()
    }

    /// Whether the message has a `tool_use` block.
    pub fn any(&self) -> bool {
        !self.ids.is_empty()
    }

    /// Count a call recovered from the answer text (it is then [`ToolUses::add`]ed like any other).
    pub fn count_text_call(&mut self) {
        self.text_call_count += 1;
    }

    /// One complete call: count how its arguments were healed, repair them by the tool's schema, and keep the
    /// model's id when it is usable (non-empty and not used yet in this message). Returns the id and the
    /// arguments as compact JSON.
    ///
    /// # Panics
    ///
    /// Never: a map of JSON values always serialises.
    pub fn add(
        &mut self,
        name: &str,
        id: Option<String>,
        mut arguments: Map<String, Value>,
        kind: HealKind,
        message_id: &str,
    ) -> (String, Box<RawValue>) {
        self.heal_counts[kind.index()] += 1;
        // `{"raw": …}` is exactly what the model produced; a schema would only misread it.
        if kind != HealKind::Raw
            && let Some(tools) = &self.tools
        {
            let counts = &mut self.repair_counts;
            tools.repair(name, &mut arguments, |repair| counts[repair.index()] += 1);
        }
        let input = serde_json::value::to_raw_value(&arguments).expect("a JSON object serialises");
        let id = match id {
            Some(id) if !id.is_empty() && !self.ids.contains(&id) => id,
            _ => self.new_id(message_id),
        };
        self.ids.push(id.clone());
        (id, input)
    }

    /// `toolu_` plus 24 random base62 characters, unique within this message.
    fn new_id(&mut self, message_id: &str) -> String {
        let rng = self.rng.get_or_insert_with(|| seeded_rng(message_id));
        loop {
            let mut id = String::with_capacity(30);
            id.push_str("toolu_");
            id.extend(std::iter::repeat_with(|| rng.alphanumeric()).take(24));
            if !self.ids.contains(&id) {
                return id;
            }
        }
    }

    /// Tool-call counters by name: how each call's arguments were decoded (`unchanged`, `parsed_string`,
    /// `unescaped`, `raw`: one per call, see [`HealKind`]), how many fields the schema repair fixed (`coerced`,
    /// `wrapped_in_array`, `dropped_null`, see [`Repair`]) and how many calls were recovered from text
    /// (`text_call`).
    pub fn counts(&self) -> [(&'static str, u64); 8] {
        let mut counts = [("", 0); 8];
        for kind in HealKind::ALL {
            counts[kind.index()] = (kind.as_str(), self.heal_counts[kind.index()]);
        }
        for repair in Repair::ALL {
            counts[HealKind::ALL.len() + repair.index()] = (repair.as_str(), self.repair_counts[repair.index()]);
        }
        counts[7] = ("text_call", self.text_call_count);
        counts
    }
}

/// A random generator seeded from OS randomness (std's `RandomState` keys), the message id, the process id and
/// the time, so forked workers that inherited the same thread-local keys still diverge.
fn seeded_rng(message_id: &str) -> fastrand::Rng {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    fastrand::Rng::with_seed(RandomState::new().hash_one((message_id, std::process::id(), nanos)))
}
