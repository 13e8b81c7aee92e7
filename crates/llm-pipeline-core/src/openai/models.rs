//! The body of `GET /v1/models`: the list of served models.

use serde::{Deserialize, Serialize};

/// The list of served models, `{"object": "list", "data": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelList {
    /// Always [`ModelList::OBJECT`].
    pub object: String,
    /// The models.
    pub data: Vec<ModelCard>,
}

impl ModelList {
    /// The `object` of a model list.
    pub const OBJECT: &'static str = "list";

    /// A list of `data`.
    pub fn new(data: Vec<ModelCard>) -> Self {
        Self {
            object: Self::OBJECT.to_owned(),
            data,
        }
    }
}

/// One served model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCard {
    /// The id a request names in `model`.
    pub id: String,
    /// Always [`ModelCard::OBJECT`].
    pub object: String,
    /// When the model was made available, in Unix seconds.
    pub created: u64,
    /// Who serves it.
    pub owned_by: String,
    /// Extension: the backend that runs it, and why it was chosen when chosen automatically.
    /// Left out when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
}

impl ModelCard {
    /// The `object` of a model card.
    pub const OBJECT: &'static str = "model";

    /// The card with its backend named (see [`ModelCard::backend`]).
    #[must_use]
    pub fn with_backend(mut self, backend: Option<String>) -> Self {
        self.backend = backend;
        self
    }

    /// The card of model `id`, served since `created`, owned by `owned_by`.
    pub fn new(id: impl Into<String>, created: u64, owned_by: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            object: Self::OBJECT.to_owned(),
            created,
            backend: None,
            owned_by: owned_by.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn model_list_has_openai_shape() {
        let list = ModelList::new(vec![ModelCard::new(
            "tiny-llama",
            1_700_000_000,
            "livepeer",
        )]);
        let value = serde_json::to_value(&list).unwrap();
        assert_eq!(
            value,
            json!({"object": "list", "data": [
                {"id": "tiny-llama", "object": "model", "created": 1_700_000_000, "owned_by": "livepeer"}
            ]})
        );
        assert_eq!(serde_json::from_value::<ModelList>(value).unwrap(), list);
    }
}
