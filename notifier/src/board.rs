//! The web board: plain HTML/SVG/JS compiled into the binary, so a mirror
//! needs nothing but the notifier's address.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const HTML: &str = include_str!("../assets/board.html");
const JS: &str = include_str!("../assets/board.js");
/// The renderer alone: the MagicMirror² module ships a copy of it.
const RENDER_JS: &str = include_str!("../assets/board-render.js");
const CSS: &str = include_str!("../assets/board.css");

pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", HTML) }),
        )
        .route(
            "/board.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
        .route(
            "/board-render.js",
            get(|| async { asset("text/javascript; charset=utf-8", RENDER_JS) }),
        )
        .route(
            "/board.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
