//! The SSH login name: `alice` for the bastion's command interface, `alice+web-1` for a session on
//! target `web-1`. `+` is the separator because `:` breaks `scp` and `rsync` host parsing.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    /// `None`: the command interface.
    pub target: Option<String>,
}

impl Login {
    /// Splits a login at its first `+`. Empty parts are not a login.
    pub fn parse(text: &str) -> Option<Login> {
        match text.split_once('+') {
            None if !text.is_empty() => Some(Login {
                user: text.to_string(),
                target: None,
            }),
            Some((user, target)) if !user.is_empty() && !target.is_empty() => Some(Login {
                user: user.to_string(),
                target: Some(target.to_string()),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Login;

    #[test]
    fn logins_split_at_the_first_plus() {
        let cases = [
            ("alice", Some(("alice", None))),
            ("alice+web-1", Some(("alice", Some("web-1")))),
            ("alice+web+1", Some(("alice", Some("web+1")))),
            ("", None),
            ("+web-1", None),
            ("alice+", None),
        ];
        for (text, expected) in cases {
            let expected = expected.map(|(user, target)| Login {
                user: user.to_string(),
                target: target.map(str::to_string),
            });
            assert_eq!(Login::parse(text), expected, "{text:?}");
        }
    }
}
