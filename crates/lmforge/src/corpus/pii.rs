//! PII scrubbing (`data.scrub_pii`), as datatrove's `PIIFormatter` does for web text: e-mail
//! addresses, IP addresses and phone-like numbers are replaced by placeholders (`<EMAIL>`,
//! `<IP_ADDRESS>`, `<PHONE>`) and counted. Candidates are found with `regex` and then checked
//! by rule: IPs must parse (std's parsers) and be public — private, loopback, link-local and
//! documentation ranges name no one, and version strings such as `1.2.3.4.5` are left alone;
//! a phone-like number has 10–15 digits (9 with a `+` country code or an area code in
//! parentheses), one kind of separator between its groups and a last group of 3+ digits (or
//! pairs after a short first group, as French numbers), so dates, times and decimals survive.

use regex::Regex;
use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

pub const EMAIL: &str = "<EMAIL>";
pub const IP: &str = "<IP_ADDRESS>";
pub const PHONE: &str = "<PHONE>";

/// Replacements made, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PiiCounts {
    pub email: u64,
    pub ip: u64,
    pub phone: u64,
}

impl PiiCounts {
    pub fn total(&self) -> u64 {
        self.email + self.ip + self.phone
    }
    pub fn add(&mut self, o: &PiiCounts) {
        self.email += o.email;
        self.ip += o.ip;
        self.phone += o.phone;
    }
}

struct Patterns {
    email: Regex,
    ipv4: Regex,
    ipv6: Regex,
    phone: Regex,
}

fn patterns() -> &'static Patterns {
    static P: OnceLock<Patterns> = OnceLock::new();
    P.get_or_init(|| Patterns {
        email: Regex::new(
            r"(?i)[a-z0-9](?:[a-z0-9._%+-]{0,63})@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}",
        )
        .expect("valid pattern"),
        ipv4: Regex::new(r"\d{1,3}(?:\.\d{1,3}){3}").expect("valid pattern"),
        ipv6: Regex::new(r"(?i)[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}").expect("valid pattern"),
        phone: Regex::new(r"(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{1,4}){1,5}|\+\d{9,15}")
            .expect("valid pattern"),
    })
}

/// `text` with its PII replaced, and what was replaced (borrowed when nothing was).
pub fn scrub(text: &str) -> (Cow<'_, str>, PiiCounts) {
    let p = patterns();
    let mut counts = PiiCounts::default();
    // Boundaries are ASCII: "邮箱是wang@example.cn" has its address right after a Han character.
    let text = replace(text, &p.email, EMAIL, &mut counts.email, |t, r| {
        bounded(t, r, |c| c.is_ascii_alphanumeric() || "._%+-".contains(c), |c| c.is_ascii_alphanumeric() || c == '-')
    });
    let text = replace_cow(text, &p.ipv4, IP, &mut counts.ip, |t, r| {
        bounded(
            t,
            r,
            |c| c.is_ascii_alphanumeric() || c == '.',
            |c| c.is_ascii_alphanumeric() || c == '.' && next_is_digit(t, r.end),
        ) && t[r.clone()].parse::<Ipv4Addr>().is_ok_and(public_v4)
    });
    let text = replace_cow(text, &p.ipv6, IP, &mut counts.ip, |t, r| {
        bounded(t, r, |c| c.is_ascii_alphanumeric() || c == ':', |c| c.is_ascii_alphanumeric() || c == ':')
            && t[r.clone()].parse::<Ipv6Addr>().is_ok_and(public_v6)
    });
    let text = replace_cow(text, &p.phone, PHONE, &mut counts.phone, |t, r| {
        bounded(
            t,
            r,
            |c| c.is_ascii_alphanumeric() || "+-._/:".contains(c),
            |c| c.is_ascii_alphanumeric() || c == '-' || c == '/',
        ) && phone_like(&t[r.clone()])
    });
    (text, counts)
}

fn next_is_digit(t: &str, at: usize) -> bool {
    t[at..].chars().nth(1).is_some_and(|c| c.is_ascii_digit())
}

/// The match is not part of a longer token: the character before it fails `before`, the one
/// after it fails `after`.
fn bounded(t: &str, r: &std::ops::Range<usize>, before: impl Fn(char) -> bool, after: impl Fn(char) -> bool) -> bool {
    !t[..r.start].chars().next_back().is_some_and(before) && !t[r.end..].chars().next().is_some_and(after)
}

fn replace<'a>(
    text: &'a str,
    re: &Regex,
    with: &str,
    n: &mut u64,
    keep: impl Fn(&str, &std::ops::Range<usize>) -> bool,
) -> Cow<'a, str> {
    let mut out = String::new();
    let mut last = 0;
    for m in re.find_iter(text) {
        let r = m.range();
        if !keep(text, &r) {
            continue;
        }
        out.push_str(&text[last..r.start]);
        out.push_str(with);
        last = r.end;
        *n += 1;
    }
    if last == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[last..]);
    Cow::Owned(out)
}

fn replace_cow<'a>(
    text: Cow<'a, str>,
    re: &Regex,
    with: &str,
    n: &mut u64,
    keep: impl Fn(&str, &std::ops::Range<usize>) -> bool,
) -> Cow<'a, str> {
    match text {
        Cow::Borrowed(t) => replace(t, re, with, n, keep),
        // An owned text is kept as it is when nothing more was replaced (no copy).
        Cow::Owned(t) => match replace(&t, re, with, n, keep) {
            Cow::Borrowed(_) => Cow::Owned(t),
            Cow::Owned(replaced) => Cow::Owned(replaced),
        },
    }
}

fn public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    let documentation = matches!(o, [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _]);
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || documentation
        || o[0] == 0)
}

fn public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    let unique_local = s[0] & 0xfe00 == 0xfc00;
    let link_local = s[0] & 0xffc0 == 0xfe80;
    let documentation = s[0] == 0x2001 && s[1] == 0x0db8;
    // At least three groups written out: "a::b" or "12:30:45"-like strings are not addresses.
    let groups = s.iter().filter(|&&g| g != 0).count();
    !(ip.is_loopback() || ip.is_unspecified() || ip.is_multicast() || unique_local || link_local || documentation)
        && groups >= 3
}

/// The rules a phone-number candidate must pass (see the module comment).
fn phone_like(m: &str) -> bool {
    let digits = m.chars().filter(char::is_ascii_digit).count();
    let international = m.starts_with('+') || m.contains('(');
    if digits > 15 || digits < if international { 9 } else { 10 } {
        return false;
    }
    // The groups after any "+CC" / "(area)" prefix.
    let body = match m.rfind(')') {
        Some(i) => &m[i + 1..],
        None if m.starts_with('+') => m.split_once([' ', '.', '-']).map_or("", |(_, rest)| rest),
        None => m,
    };
    if m.starts_with('+') && !m.contains([' ', '.', '-', '(']) {
        return true; // "+4915112345678"
    }
    let body = body.trim_start_matches([' ', '.', '-']);
    let seps: Vec<char> = body.chars().filter(|c| !c.is_ascii_digit()).collect();
    if seps.windows(2).any(|w| w[0] != w[1]) {
        return false;
    }
    let groups: Vec<&str> = body.split([' ', '.', '-']).collect();
    let last = groups.last().map_or(0, |g| g.len());
    last >= 3 || (groups.len() >= 4 && groups[0].len() <= 2 && groups[1..].iter().all(|g| g.len() == 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> (String, PiiCounts) {
        let (out, n) = scrub(t);
        (out.into_owned(), n)
    }

    #[test]
    fn emails_ips_and_phones_are_replaced() {
        let (out, n) = s("Write to jane.doe+lists@mail.example.org or call +1 415-555-0132 from 93.184.216.34.");
        assert_eq!(out, "Write to <EMAIL> or call <PHONE> from <IP_ADDRESS>.");
        assert_eq!(n, PiiCounts { email: 1, ip: 1, phone: 1 });
        let (out, n) = s("(415) 555-0132, 020 7946 0958, 555.123.4567, +33 1 23 45 67 89, +4915112345678");
        assert_eq!(out, "<PHONE>, <PHONE>, <PHONE>, <PHONE>, <PHONE>");
        assert_eq!(n.phone, 5);
        let (out, n) = s("server 2a00:1450:4001:82a::200e answered");
        assert_eq!((out.as_str(), n.ip), ("server <IP_ADDRESS> answered", 1));
        assert_eq!(s("王先生的邮箱是wang@example.cn。").0, "王先生的邮箱是<EMAIL>。");
    }

    #[test]
    fn lookalikes_are_left_alone() {
        for t in [
            "On 2024-01-05 at 12:30:45 the price rose 1,234.56 (3.5%).",
            "Version 1.2.3.4.5 and 10.0.0.1 on the local network, 127.0.0.1 and 192.0.2.7 in the docs.",
            "Call std::io::Read or a::b, see fe80::1 and ::1.",
            "The year 2023 had 365 days; ISBN 978-3-16-148410-0 is a book.",
            "user@localhost is no address, and neither is @handle.",
            "Order 12345678 shipped, tracking 1Z999AA10123456784.",
        ] {
            let (out, n) = s(t);
            assert_eq!(out, t, "{n:?}");
            assert_eq!(n.total(), 0, "{t}");
        }
        assert!(matches!(scrub("no pii here").0, Cow::Borrowed(_)));
    }
}
