//! The Polaris instance id of an instance whose client sent none.

use sha1::{Digest, Sha1};

/// Lowercase hex SHA-1 of `namespace##service##host##port`, or of
/// `namespace##service##vpc_id##host##port` when `vpc_id` is not empty.
pub fn instance_id(namespace: &str, service: &str, vpc_id: &str, host: &str, port: u32) -> String {
    let mut hash = Sha1::new();
    for part in [namespace, service] {
        hash.update(part.as_bytes());
        hash.update(b"##");
    }
    if !vpc_id.is_empty() {
        hash.update(vpc_id.as_bytes());
        hash.update(b"##");
    }
    hash.update(host.as_bytes());
    hash.update(b"##");
    hash.update(port.to_string().as_bytes());
    hex::encode(hash.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values computed independently (Python hashlib.sha1 over the joined text).
    #[test]
    fn known_ids() {
        assert_eq!(
            instance_id("default", "echo", "", "10.0.0.1", 8080),
            "f66fb94da5404b4c8a541173874f53eb60f82440"
        );
        assert_eq!(
            instance_id("Production", "pay.api", "vpc-1", "192.168.1.20", 0),
            "a3c24a9ed8e360099de9354a6ce49e81567e0d63"
        );
        assert_eq!(
            instance_id("ns", "svc", "", "h", 65_535),
            "61abf9c91af4ec52afb55ecc774075a272678e2e"
        );
    }

    proptest::proptest! {
        #[test]
        fn ids_are_40_lowercase_hex_and_differ_by_port(
            ns in "[a-z]{1,8}", svc in "[a-z]{1,8}", host in "[0-9.]{1,15}", port in 0u32..65_535,
        ) {
            let id = instance_id(&ns, &svc, "", &host, port);
            proptest::prop_assert_eq!(id.len(), 40);
            proptest::prop_assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            proptest::prop_assert_ne!(id, instance_id(&ns, &svc, "", &host, port + 1));
        }
    }
}
