use super::*;
use clap::CommandFactory;

#[test]
fn the_cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn sizes_take_units() {
    assert_eq!(byte_size("64KiB"), Ok(65536));
    assert_eq!(byte_size("2m"), Ok(2 << 20));
    assert_eq!(byte_size("10"), Ok(10));
    assert!(byte_size("ten").is_err());
    assert!(byte_size("1XB").is_err());
}

#[test]
fn the_jwks_refresh_floor_stays_between_a_second_and_an_hour() {
    let mut c = Config::default_for_tests();
    assert_eq!(c.jwks_min_refresh, Duration::from_secs(30));
    for bad in [
        Duration::ZERO,
        Duration::from_millis(999),
        Duration::from_secs(3601),
    ] {
        c.jwks_min_refresh = bad;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("SSEGATE_JWKS_MIN_REFRESH"), "{e}");
    }
    c.jwks_min_refresh = Duration::from_secs(1);
    assert!(c.validate().is_ok());
}

#[test]
fn trusted_proxies_are_cidrs_or_addresses() {
    let cli = Cli::try_parse_from([
        "ssegate",
        "--trusted-proxies",
        "10.0.0.0/8, 192.0.2.7,fd00::/8,172.16.5.4/12",
    ])
    .unwrap();
    let nets: Vec<String> = cli.serve.trusted_proxies.iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8", "172.16.0.0/12"]);
    for bad in ["10.0.0.0/33", "example.com", "10.0.0/8", ""] {
        let e = Cli::try_parse_from(["ssegate", "--trusted-proxies", bad]).unwrap_err();
        assert!(e.to_string().contains("--trusted-proxies"), "{bad}: {e}");
    }
    assert!(Config::default_for_tests().trusted_proxies.is_empty());
}

#[test]
fn errors_name_the_flag_and_the_variable() {
    let mut c = Config::default_for_tests();
    c.max_channels = 0;
    let e = c.validate().unwrap_err().to_string();
    assert!(
        e.contains("--max-channels") && e.contains("SSEGATE_MAX_CHANNELS"),
        "{e}"
    );
}
