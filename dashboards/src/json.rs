//! JSON in and out: [`AppJson`] reads a request body, [`Live`] writes an answer.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ApiError;

/// A JSON request body. It must come with `Content-Type: application/json`, which a
/// cross-site form cannot send without a CORS preflight we never grant; otherwise 415, and
/// 400 with serde's own words when it does not parse.
///
/// serde_json reads the body, not axum's `Json`, whose messages differ from the ones API
/// clients have always had.
pub(crate) struct AppJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        // Buffered first: a body over the limit is 413 whatever its type says.
        let body = Bytes::from_request(req, state)
            .await
            .map_err(ApiError::rejection)?;
        if !json {
            return Err(ApiError::UnsupportedMediaType(
                "expected Content-Type: application/json",
            ));
        }
        serde_json::from_slice(&body)
            .map(AppJson)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))
    }
}

/// A JSON answer that must not be cached: it is live state.
pub(crate) struct Live<T>(pub T);

impl<T: Serialize> IntoResponse for Live<T> {
    fn into_response(self) -> Response {
        let mut res = Json(self.0).into_response();
        res.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        res
    }
}
