//! The device is only ever a TLS *client*, but MbedTLS's `mbedtls_ssl_handshake_step`
//! (ssl_tls.c) calls the server state machines too, so the linker would pull
//! `ssl_tls12_server.c` and `ssl_tls13_server.c` (29 KB) out of mbedtls-rs-sys's prebuilt
//! library. Defining their two entry points here keeps those objects out: nothing else in
//! the library or in mbedtls-rs references them (checked with `nm` on mbedtls-rs-sys 0.3.1;
//! should a later version reference another symbol of those files, the link fails with a
//! duplicate symbol instead of silently changing). A server endpoint would get
//! `MBEDTLS_ERR_SSL_FEATURE_UNAVAILABLE`; this firmware never configures one.

use core::ffi::{c_int, c_void};

/// `MBEDTLS_ERR_SSL_FEATURE_UNAVAILABLE` (mbedtls/ssl.h).
const FEATURE_UNAVAILABLE: c_int = -0x7080;

/// Stands in for ssl_tls12_server.c's state machine (server endpoints only).
#[no_mangle]
extern "C" fn mbedtls_ssl_handshake_server_step(_ssl: *mut c_void) -> c_int {
    FEATURE_UNAVAILABLE
}

/// Stands in for ssl_tls13_server.c's state machine (server endpoints only).
#[no_mangle]
extern "C" fn mbedtls_ssl_tls13_handshake_server_step(_ssl: *mut c_void) -> c_int {
    FEATURE_UNAVAILABLE
}
