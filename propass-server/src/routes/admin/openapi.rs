//! What a route reads, as the OpenAPI document says it: its JSON body's
//! fields or its query parameters, each with a type and whether it is
//! required. Each is tied to the type the handler reads, so a test can read
//! the documented input as that type (the types refuse unknown fields): the
//! document cannot name a field the handler does not read, nor call one
//! optional that it requires.

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

/// A field's type on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Int,
    Bool,
    /// A list of ids (clients).
    Ids,
    /// A list of strings.
    Texts,
    /// An RFC 3339 time.
    Time,
    /// `admin`, `operator` or `kiosk`.
    Role,
}

impl Kind {
    fn schema(self) -> Value {
        match self {
            Self::Text => json!({"type": "string"}),
            Self::Int => json!({"type": "integer"}),
            Self::Bool => json!({"type": "boolean"}),
            Self::Ids => json!({"type": "array", "items": {"type": "integer"}}),
            Self::Texts => json!({"type": "array", "items": {"type": "string"}}),
            Self::Time => json!({"type": "string", "format": "date-time"}),
            Self::Role => json!({"type": "string", "enum": ["admin", "operator", "kiosk"]}),
        }
    }

    /// A value of this type, for the test.
    fn sample(self) -> Value {
        match self {
            Self::Text => json!("text"),
            Self::Int => json!(2),
            Self::Bool => json!(true),
            Self::Ids => json!([1, 2]),
            Self::Texts => json!(["A0A1A2A3A4A5"]),
            Self::Time => json!("2026-12-01T10:00:00Z"),
            Self::Role => json!("operator"),
        }
    }
}

/// One field of a body, or one query parameter.
#[derive(Debug, Clone, Copy)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    pub required: bool,
}

impl Field {
    pub const fn required(name: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            required: true,
        }
    }

    pub const fn optional(name: &'static str, kind: Kind) -> Self {
        Self {
            name,
            kind,
            required: false,
        }
    }
}

/// What a route reads besides its path.
#[derive(Debug, Clone, Copy)]
pub enum Input {
    Nothing,
    /// A JSON body; `accepts` reads a body as the handler's type.
    Body {
        fields: &'static [Field],
        accepts: fn(Value) -> Result<(), String>,
    },
    /// Query parameters; `accepts` reads a query string as the handler's type.
    Query {
        fields: &'static [Field],
        accepts: fn(&str) -> Result<(), String>,
    },
}

/// Reads `body` as `T`.
pub fn accepts_body<T: DeserializeOwned>(body: Value) -> Result<(), String> {
    serde_json::from_value::<T>(body)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Reads `query` as `T`, as actix's `web::Query` does.
pub fn accepts_query<T: DeserializeOwned>(query: &str) -> Result<(), String> {
    actix_web::web::Query::<T>::from_query(query)
        .map(drop)
        .map_err(|e| e.to_string())
}

impl Input {
    /// Adds the body or the parameters to an OpenAPI operation.
    pub fn document(&self, operation: &mut Value) {
        match self {
            Self::Nothing => {}
            Self::Body { fields, .. } => {
                let properties: Map<String, Value> = fields
                    .iter()
                    .map(|f| (f.name.to_owned(), f.kind.schema()))
                    .collect();
                let required: Vec<&str> = fields
                    .iter()
                    .filter(|f| f.required)
                    .map(|f| f.name)
                    .collect();
                operation["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": properties,
                        "required": required,
                        "additionalProperties": false
                    }}}
                });
            }
            Self::Query { fields, .. } => {
                if let Some(parameters) = operation["parameters"].as_array_mut() {
                    parameters.extend(fields.iter().map(|f| {
                        json!({"name": f.name, "in": "query", "required": f.required, "schema": f.kind.schema()})
                    }));
                }
            }
        }
    }

    /// Reads the fields `some` (each with a sample value) as the handler would.
    fn read(&self, some: &[&Field]) -> Result<(), String> {
        match *self {
            Self::Nothing => Ok(()),
            Self::Body { accepts, .. } => {
                let body: Map<String, Value> = some
                    .iter()
                    .map(|f| (f.name.to_owned(), f.kind.sample()))
                    .collect();
                accepts(Value::Object(body))
            }
            Self::Query { accepts, .. } => {
                let query: Vec<String> = some
                    .iter()
                    .map(|f| {
                        let v = f.kind.sample();
                        let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
                        format!("{}={}", f.name, v.replace('+', "%2B"))
                    })
                    .collect();
                accepts(&query.join("&"))
            }
        }
    }

    /// What is wrong with the documentation against the handler's type, if
    /// anything: every field, and the required ones alone, must be read;
    /// without a required one, refused.
    pub fn check(&self) -> Option<String> {
        let fields: &[Field] = match *self {
            Self::Nothing => return None,
            Self::Body { fields, .. } | Self::Query { fields, .. } => fields,
        };
        let all: Vec<&Field> = fields.iter().collect();
        if let Err(e) = self.read(&all) {
            return Some(format!("every documented field together is refused: {e}"));
        }
        let required: Vec<&Field> = fields.iter().filter(|f| f.required).collect();
        if let Err(e) = self.read(&required) {
            return Some(format!("the required fields alone are refused: {e}"));
        }
        for missing in &required {
            let rest: Vec<&Field> = required
                .iter()
                .copied()
                .filter(|f| f.name != missing.name)
                .collect();
            if self.read(&rest).is_ok() {
                return Some(format!(
                    "{} is documented required but is not",
                    missing.name
                ));
            }
        }
        None
    }
}
