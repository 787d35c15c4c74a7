//! Fuzz body `client_frame`: arbitrary bytes as a client's text frame, read
//! by the socket's one parser of client frames
//! (`signalbox_realtime::frames::ClientFrame::parse`).
//!
//! A WebSocket text frame is UTF-8 by the protocol (tungstenite refuses
//! anything else before the socket task sees it), so only UTF-8 input
//! reaches the parser. Whatever it is, the parser answers a frame or an
//! error, never panics; a frame that parses serialises and parses back to
//! itself (the protocol has one spelling per meaning), and the refusal the
//! socket would send (`error {code: "bad_request", message}`) is valid JSON
//! that reads back as that frame.
//!
//! Shared by `fuzz/fuzz_targets/client_frame.rs` and the corpus replay
//! `crates/realtime/tests/fuzz_corpus.rs`.

use signalbox_realtime::{
    error::frame_code,
    frames::{ClientFrame, ServerFrame},
};

/// The frame `data` parses to, or the text of the refusal the socket sends.
pub fn run(data: &[u8]) -> Result<ClientFrame, String> {
    let Ok(text) = std::str::from_utf8(data) else {
        return Err("not UTF-8: refused by the WebSocket layer".to_owned());
    };
    match ClientFrame::parse(text) {
        Ok(frame) => {
            let again = serde_json::to_string(&frame).expect("a parsed frame serialises");
            let back = ClientFrame::parse(&again).expect("a serialised frame parses");
            assert_eq!(back, frame, "the frame changed on the round trip: {again}");
            Ok(frame)
        }
        Err(error) => {
            let refusal = ServerFrame::error(frame_code::BAD_REQUEST, error.to_string());
            let sent: ServerFrame =
                serde_json::from_str(&refusal.to_json()).expect("the refusal is JSON");
            assert_eq!(sent, refusal);
            Err(error.to_string())
        }
    }
}
