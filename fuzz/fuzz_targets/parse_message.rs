//! `Message::parse` + every accessor + MESSAGE-INTEGRITY(-SHA256) with a
//! fixed key + FINGERPRINT.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    turnpike_fuzz::probe_message(data);
});
