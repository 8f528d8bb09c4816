//! Development certificates: a throwaway CA and a leaf it signs.
//!
//! Clients such as rustls reject a self-signed certificate used as its own
//! CA (CA:TRUE on the leaf), so the server gets a proper CA:FALSE leaf and
//! clients trust the CA. Keys live in memory unless written out.

use std::{fs, io, path::Path};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA certificate and a server certificate (with key) signed by it.
pub struct DevCerts {
    ca: rcgen::Certificate,
    leaf: rcgen::Certificate,
    leaf_key: KeyPair,
}

pub const CA_FILE: &str = "ca.pem";
pub const CERT_FILE: &str = "cert.pem";
pub const KEY_FILE: &str = "key.pem";

impl DevCerts {
    /// A fresh CA and a leaf valid for `names` (DNS names or IP addresses).
    pub fn generate(names: &[String]) -> Result<Self, rcgen::Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name = name("quic-xdp development CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf_key = KeyPair::generate()?;
        let mut leaf_params = CertificateParams::new(names.to_vec())?;
        // No basicConstraints at all: an end entity, CA:FALSE by default.
        // (rcgen's ExplicitNoCa writes cA FALSE out, which DER forbids for a
        // DEFAULT value; strict parsers such as Python's cryptography, used
        // by aioquic, reject the certificate.)
        leaf_params.is_ca = IsCa::NoCa;
        leaf_params.distinguished_name = name("quic-xdp development server");
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &issuer)?;
        Ok(Self { ca, leaf, leaf_key })
    }

    /// Valid for localhost, 127.0.0.1 and ::1.
    pub fn localhost() -> Result<Self, rcgen::Error> {
        Self::generate(&["localhost".into(), "127.0.0.1".into(), "::1".into()])
    }

    /// What clients should trust.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// The server's chain: leaf, then CA.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.leaf.der().clone(), self.ca.der().clone()]
    }

    /// The leaf's SubjectPublicKeyInfo (DER): what a client pins, e.g.
    /// Chromium's --ignore-certificate-errors-spki-list (base64 SHA-256).
    pub fn leaf_spki_der(&self) -> Vec<u8> {
        rcgen::PublicKeyData::subject_public_key_info(&self.leaf_key)
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivatePkcs8KeyDer::from(self.leaf_key.serialize_der()).into()
    }

    /// Writes ca.pem, cert.pem (leaf + CA) and key.pem into `dir`.
    pub fn write_pem(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        fs::write(dir.join(CA_FILE), self.ca.pem())?;
        fs::write(dir.join(CERT_FILE), self.leaf.pem() + &self.ca.pem())?;
        write_private(
            &dir.join(KEY_FILE),
            self.leaf_key.serialize_pem().as_bytes(),
        )
    }
}

/// A DER certificate as PEM text (e.g. a CA for clients to trust).
pub fn certificate_pem(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_is_not_a_ca_and_chains_to_the_ca() {
        let certs = DevCerts::generate(&["example.test".into(), "10.0.0.1".into()]).unwrap();
        let chain = certs.chain();
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], certs.ca_der());
        // basicConstraints (OID 2.5.29.19), critical, then its value:
        // SEQUENCE { cA TRUE } in the CA; the leaf must not say TRUE, nor
        // write the DEFAULT FALSE out (not DER: strict parsers reject it).
        let ext = |value: &[u8]| {
            let mut der = vec![
                0x06,
                0x03,
                0x55,
                0x1d,
                0x13,
                0x01,
                0x01,
                0xff,
                0x04,
                value.len() as u8,
            ];
            der.extend_from_slice(value);
            der
        };
        let ca = ext(&[0x30, 0x03, 0x01, 0x01, 0xff]);
        let explicit_false = [0x30, 0x03, 0x01, 0x01, 0x00];
        assert!(!contains(&chain[0], &ca), "leaf must not be a CA");
        assert!(
            !contains(&chain[0], &explicit_false),
            "DEFAULT FALSE written out"
        );
        assert!(contains(&chain[1], &ca), "CA must be CA:TRUE");
        assert!(contains(&chain[0], b"example.test"));
        assert!(!matches!(certs.key(), PrivateKeyDer::Pkcs1(_)));
    }

    #[test]
    fn a_certificate_round_trips_through_pem() {
        let ca = DevCerts::localhost().unwrap().ca_der();
        let text = certificate_pem(&ca);
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----"));
        use rustls_pki_types::pem::PemObject;
        assert_eq!(CertificateDer::from_pem_slice(text.as_bytes()).unwrap(), ca);
    }

    #[test]
    fn pem_files_are_written_with_a_private_key_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("qx-certs-{}", std::process::id()));
        DevCerts::localhost().unwrap().write_pem(&dir).unwrap();
        let cert = fs::read_to_string(dir.join(CERT_FILE)).unwrap();
        assert_eq!(cert.matches("BEGIN CERTIFICATE").count(), 2);
        let key = dir.join(KEY_FILE);
        assert!(fs::read_to_string(&key).unwrap().contains("PRIVATE KEY"));
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::remove_dir_all(dir).unwrap();
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }
}
