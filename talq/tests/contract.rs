//! The contract against the published files in `../shared/talq`: what it accepts and what
//! it refuses, for both APIs.

use std::path::PathBuf;

use lamplighter_talq::{Api, Contract, ContractError};
use serde_json::json;

fn contract() -> Contract {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/talq");
    Contract::load(&dir).unwrap_or_else(|e| panic!("the TALQ 2.7.1 files are needed: {e}"))
}

fn invalid(r: Result<(), ContractError>) -> Vec<String> {
    match r {
        Err(ContractError::Invalid { errors, .. }) => errors,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[test]
fn a_device_list_is_checked_against_the_data_model() {
    let c = contract();
    c.check_response(Api::Gateway, "GET", "/devices", 200, &json!([]))
        .unwrap();
    let errors = invalid(c.check_response(
        Api::Gateway,
        "GET",
        "/devices?clientAddress=x",
        200,
        &json!([{"name": "lamp 1"}]),
    ));
    assert!(
        errors.iter().any(|e| e.contains("\"address\"")),
        "{errors:?}"
    );
    assert!(errors.iter().all(|e| e.ends_with("/0")), "{errors:?}");
    let errors = invalid(c.check_response(Api::Gateway, "get", "/devices", 200, &json!({})));
    assert!(errors[0].contains("array"), "{errors:?}");
}

#[test]
fn error_answers_are_lists_of_talq_error_messages() {
    let c = contract();
    let good = json!([{"key": "payloadError", "message": "not JSON"}]);
    for path in ["/override-commands", "/calendars"] {
        c.check_response(Api::Gateway, "post", path, 400, &good)
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
    let errors = invalid(c.check_response(
        Api::Gateway,
        "post",
        "/override-commands",
        400,
        &json!([{"message": "no key"}]),
    ));
    assert!(errors[0].contains("\"key\""), "{errors:?}");
    c.check_schema("TALQErrorMessage", &json!({"key": "headerMissing"}))
        .unwrap();
}

#[test]
fn templated_paths_requests_and_the_cms_api_are_found() {
    let c = contract();
    let (template, _) = c
        .operation(Api::Gateway, "get", "/devices/lamp-12")
        .unwrap();
    assert_eq!(template, "/devices/{deviceAddress}");
    // An override command needs what the data model requires of one.
    let errors = invalid(c.check_request(Api::Gateway, "post", "/override-commands", &json!(7)));
    assert!(!errors.is_empty());
    // The CMS API: a gateway announces devices there.
    assert!(c.operation(Api::Cms, "post", "/devices").is_ok());
}

#[test]
fn what_the_specification_does_not_define_is_an_error_not_a_pass() {
    let c = contract();
    assert!(matches!(
        c.check_response(Api::Gateway, "get", "/lamps", 200, &json!([])),
        Err(ContractError::NoOperation { .. })
    ));
    assert!(matches!(
        c.check_response(Api::Gateway, "get", "/devices", 418, &json!([])),
        Err(ContractError::NoBody { .. })
    ));
    assert!(matches!(
        c.check_request(Api::Gateway, "get", "/devices", &json!({})),
        Err(ContractError::NoBody { .. })
    ));
    assert!(matches!(
        c.check_schema("NoSuchThing", &json!({})),
        Err(ContractError::Schema { .. })
    ));
}
