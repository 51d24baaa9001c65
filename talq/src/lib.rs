//! TALQ 2.7.1, the open standard between a council's central management software (CMS) and
//! the outdoor device networks (gateways) that run its lamps: the contract, as a validator.
//!
//! The published specification is three OpenAPI 3.0 files (`../shared/talq/`): the Gateway
//! API (what a gateway serves and a CMS calls), the CMS API (what a CMS serves and a gateway
//! calls) and the data model both refer to. [`Contract`] loads them and checks a message
//! that crosses either API against the schema the specification gives for it: the request
//! body of an operation, or its response body for a status. The `$ref`s from the API files
//! into the data model are resolved from the loaded file; nothing is fetched.
//!
//! It is built from the specification alone, not from our own types, so a test that checks
//! every message with it notices when our gateway or CMS drifts from the standard:
//!
//! ```no_run
//! use lamplighter_talq::{Api, Contract};
//! let contract = Contract::load("../shared/talq".as_ref()).unwrap();
//! let answer = serde_json::json!([{"key": "payloadError", "message": "bad JSON"}]);
//! contract
//!     .check_response(Api::Gateway, "post", "/override-commands", 400, &answer)
//!     .unwrap();
//! ```
//!
//! OpenAPI 3.0 schema objects are read as JSON Schema draft 7, which they follow but for
//! OpenAPI's own keywords (`discriminator`, `nullable`, `example`), which are ignored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jsonschema::{Retrieve, Uri, Validator};
use serde_json::Value;

/// The file names as published.
pub const GATEWAY_FILE: &str = "talq-api-gateway-2-7-1-online.json";
pub const CMS_FILE: &str = "talq-api-cms-2-7-1-online.json";
pub const DATA_MODEL_FILE: &str = "talq-data-model-2-7-1-online.json";

/// The base the API files' relative `$ref`s resolve against (never fetched).
const BASE: &str = "https://talq.invalid/oas/";

/// Which side of the standard a message crosses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    /// Served by an outdoor device network, called by a CMS.
    Gateway,
    /// Served by a CMS, called by a gateway.
    Cms,
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Api::Gateway => "Gateway API",
            Api::Cms => "CMS API",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the {api} has no operation {method} {path}")]
    NoOperation {
        api: Api,
        method: String,
        path: String,
    },
    #[error("the {api}'s {method} {template} defines no JSON body for {what}")]
    NoBody {
        api: Api,
        method: String,
        template: String,
        what: String,
    },
    #[error("the schema for {what} does not compile: {message}")]
    Schema { what: String, message: String },
    #[error("{what} is not valid TALQ: {}", errors.join("; "))]
    Invalid { what: String, errors: Vec<String> },
}

/// The three files, and validators compiled on first use.
pub struct Contract {
    gateway: Value,
    cms: Value,
    data_model: Arc<Value>,
    compiled: Mutex<HashMap<String, Arc<Validator>>>,
}

/// Hands the data model file to the validator for the API files' references to it.
struct DataModel(Arc<Value>);

impl Retrieve for DataModel {
    fn retrieve(
        &self,
        uri: &Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        if uri.as_str() == format!("{BASE}{DATA_MODEL_FILE}") {
            Ok((*self.0).clone())
        } else {
            Err(format!("{uri} is not part of TALQ 2.7.1").into())
        }
    }
}

fn read(dir: &Path, name: &str) -> Result<Value, ContractError> {
    let path = dir.join(name);
    let text = std::fs::read_to_string(&path).map_err(|source| ContractError::Read {
        path: path.clone(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ContractError::Json { path, source })
}

fn no_body(api: Api, method: &str, template: &str, what: &str) -> ContractError {
    ContractError::NoBody {
        api,
        method: method.to_ascii_lowercase(),
        template: template.to_string(),
        what: what.to_string(),
    }
}

/// Whether the concrete `path` fits the OpenAPI path `template` (`/devices/{deviceAddress}`).
fn fits(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

impl Contract {
    /// Loads the three files from `dir` (`../shared/talq`).
    pub fn load(dir: &Path) -> Result<Contract, ContractError> {
        Ok(Contract {
            gateway: read(dir, GATEWAY_FILE)?,
            cms: read(dir, CMS_FILE)?,
            data_model: Arc::new(read(dir, DATA_MODEL_FILE)?),
            compiled: Mutex::new(HashMap::new()),
        })
    }

    fn api(&self, api: Api) -> &Value {
        match api {
            Api::Gateway => &self.gateway,
            Api::Cms => &self.cms,
        }
    }

    /// The path template `path` is an instance of (an exact path before a templated one)
    /// and its operation for `method`.
    pub fn operation(
        &self,
        api: Api,
        method: &str,
        path: &str,
    ) -> Result<(String, &Value), ContractError> {
        let method = method.to_ascii_lowercase();
        let none = || ContractError::NoOperation {
            api,
            method: method.clone(),
            path: path.to_string(),
        };
        let path = path.split('?').next().unwrap_or(path);
        let paths = self.api(api)["paths"].as_object().ok_or_else(none)?;
        let template = paths
            .get_key_value(path)
            .map(|(k, _)| k)
            .or_else(|| paths.keys().find(|t| fits(t, path)))
            .ok_or_else(none)?;
        let op = paths[template].get(&method).ok_or_else(none)?;
        Ok((template.clone(), op))
    }

    /// Checks the request body of `method path`.
    pub fn check_request(
        &self,
        api: Api,
        method: &str,
        path: &str,
        body: &Value,
    ) -> Result<(), ContractError> {
        let (template, op) = self.operation(api, method, path)?;
        let schema = &op["requestBody"]["content"]["application/json"]["schema"];
        if schema.is_null() {
            return Err(no_body(api, method, &template, "the request"));
        }
        let what = format!("the request body of {api} {method} {template}");
        self.check(api, schema, &what, body)
    }

    /// Checks the body of the answer to `method path` with `status`.
    pub fn check_response(
        &self,
        api: Api,
        method: &str,
        path: &str,
        status: u16,
        body: &Value,
    ) -> Result<(), ContractError> {
        let (template, op) = self.operation(api, method, path)?;
        let status_key = status.to_string();
        let schema = &op["responses"][status_key.as_str()]["content"]["application/json"]["schema"];
        if schema.is_null() {
            return Err(no_body(api, method, &template, &format!("status {status}")));
        }
        let what = format!("the {status} answer of {api} {method} {template}");
        self.check(api, schema, &what, body)
    }

    /// Checks `value` against the data model's schema `name` (`Device`, `OverrideCommand`).
    pub fn check_schema(&self, name: &str, value: &Value) -> Result<(), ContractError> {
        let schema = serde_json::json!({
            "$ref": format!("./{DATA_MODEL_FILE}#/components/schemas/{name}")
        });
        if self.data_model["components"]["schemas"].get(name).is_none() {
            return Err(ContractError::Schema {
                what: name.to_string(),
                message: "no such schema in the data model".into(),
            });
        }
        self.check(Api::Gateway, &schema, &format!("a {name}"), value)
    }

    fn check(
        &self,
        api: Api,
        schema: &Value,
        what: &str,
        value: &Value,
    ) -> Result<(), ContractError> {
        let key = format!("{api}\n{schema}");
        let cached = self
            .compiled
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let validator = match cached {
            Some(v) => v,
            None => {
                let file = match api {
                    Api::Gateway => GATEWAY_FILE,
                    Api::Cms => CMS_FILE,
                };
                // Wrapped, since a draft-7 `$ref` hides its siblings, `$id` among them.
                let rooted = serde_json::json!({
                    "$id": format!("{BASE}{file}"),
                    "allOf": [schema],
                });
                let v = jsonschema::draft7::options()
                    .with_retriever(DataModel(self.data_model.clone()))
                    .build(&rooted)
                    .map_err(|e| ContractError::Schema {
                        what: what.to_string(),
                        message: e.to_string(),
                    })?;
                let v = Arc::new(v);
                self.compiled
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key, v.clone());
                v
            }
        };
        let errors: Vec<String> = validator
            .iter_errors(value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ContractError::Invalid {
                what: what.to_string(),
                errors,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fits;

    #[test]
    fn concrete_paths_fit_their_templates() {
        assert!(fits("/devices/{deviceAddress}", "/devices/lamp-12"));
        assert!(!fits("/devices/{deviceAddress}", "/devices/"));
        assert!(!fits("/devices/{deviceAddress}", "/devices/a/b"));
        assert!(!fits("/devices", "/groups"));
        assert!(fits("/devices", "/devices"));
    }
}
