//! The startup parameters a client may send to a target (issue #17).
//!
//! Every startup parameter the bastion forwards changes the target session, so each is recorded
//! (in `session.started` and the query log's first record). Those that change who the session
//! acts as or what the target audits (`role`, `session_authorization`,
//! `session_replication_role`, `event_triggers`, the preload libraries, `log_*`, `pgaudit.*`,
//! `track_*`, `debug_*`, `trace_*`, `pg_stat_statements.*`, `auto_explain.*`) are refused unless the target lists them in
//! `allowed_startup_parameters`, whether they come as parameters or inside `options` as
//! `-c name=value` / `--name=value`. `options` may carry only such settings: its other switches
//! (`-d` sets the log level, for one) are refused too.

/// Why a client's startup parameters were refused: the message to tell it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartupRefusal {
    #[error(
        "startup parameter {0:?} changes identity or auditing on the target and is not allowed \
         through the bastion; ask the operators to list it in the target's allowed_startup_parameters"
    )]
    Guarded(String),
    #[error(
        "the options startup parameter may only carry -c name=value settings through the bastion, \
         not {0:?}"
    )]
    Switch(String),
    #[error(
        "client_encoding {0:?} can hide quotes from the session's record; use UTF8 through the \
         bastion"
    )]
    Encoding(String),
}

/// Checks the client's parameters against the target's exceptions (lowercase names).
pub fn check(parameters: &[(String, String)], allowed: &[String]) -> Result<(), StartupRefusal> {
    for (name, value) in parameters {
        if name.eq_ignore_ascii_case("client_encoding")
            && super::observe::unsafe_client_encoding(value.as_bytes())
        {
            return Err(StartupRefusal::Encoding(value.clone()));
        }
        if name == "options" {
            for setting in option_settings(value)? {
                check_name(&setting, allowed)?;
            }
        } else {
            check_name(name, allowed)?;
        }
    }
    Ok(())
}

/// Families of settings that decide what the target logs, traces or audits.
const GUARDED_PREFIXES: [&str; 7] = [
    "log_",
    "pgaudit.",
    "track_",
    "debug_",
    "trace_",
    "pg_stat_statements.",
    "auto_explain.",
];

fn check_name(name: &str, allowed: &[String]) -> Result<(), StartupRefusal> {
    // The server folds case, and `-c` folds dashes into underscores.
    let name = name.to_ascii_lowercase().replace('-', "_");
    let guarded = matches!(
        name.as_str(),
        "role"
            | "session_authorization"
            | "session_replication_role"
            | "event_triggers"
            | "session_preload_libraries"
            | "local_preload_libraries"
            | "dynamic_library_path"
    ) || GUARDED_PREFIXES
        .iter()
        .any(|prefix| name.starts_with(prefix));
    if guarded && !allowed.contains(&name) {
        return Err(StartupRefusal::Guarded(name));
    }
    Ok(())
}

/// The names that an `options` value sets, split as the server splits it (whitespace, with a
/// backslash escaping the next character).
fn option_settings(options: &str) -> Result<Vec<String>, StartupRefusal> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut characters = options.chars();
    while let Some(character) = characters.next() {
        match character {
            '\\' => {
                if let Some(next) = characters.next() {
                    word.push(next);
                }
                in_word = true;
            }
            // The server splits with C's isspace, which takes vertical tab too.
            ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            character => {
                word.push(character);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    let mut names = Vec::new();
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let setting = if word == "-c" {
            words.next().unwrap_or_default()
        } else if let Some(setting) = word.strip_prefix("--").or_else(|| word.strip_prefix("-c")) {
            setting.to_string()
        } else {
            return Err(StartupRefusal::Switch(word));
        };
        let name = setting.split('=').next().unwrap_or_default().to_string();
        names.push(name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn guarded_parameters_are_refused_in_every_form_unless_allowed() {
        let allowed = vec!["log_min_duration_statement".to_string()];
        for (parameters, refused) in [
            (
                &[("application_name", "psql"), ("client_encoding", "UTF8")][..],
                None,
            ),
            (
                &[("DateStyle", "ISO"), ("extra_float_digits", "3")][..],
                None,
            ),
            (
                &[("options", "-c search_path=app -c statement_timeout=5s")][..],
                None,
            ),
            (&[("log_min_duration_statement", "0")][..], None),
            (&[("role", "postgres")][..], Some("role")),
            (&[("ROLE", "postgres")][..], Some("role")),
            (
                &[("session_authorization", "postgres")][..],
                Some("session_authorization"),
            ),
            (
                &[("session_replication_role", "replica")][..],
                Some("session_replication_role"),
            ),
            (&[("log_statement", "none")][..], Some("log_statement")),
            (&[("pgaudit.log", "none")][..], Some("pgaudit.log")),
            (&[("options", "-c role=postgres")][..], Some("role")),
            (&[("options", "-crole=postgres")][..], Some("role")),
            (
                &[("options", "--session-replication-role=replica")][..],
                Some("session_replication_role"),
            ),
            (
                &[("options", "-c search_path=a\\ -c\\ x -c log_statement=none")][..],
                Some("log_statement"),
            ),
            (
                &[("options", "-c pgaudit.log=none")][..],
                Some("pgaudit.log"),
            ),
        ] {
            let result = check(&pairs(parameters), &allowed);
            match refused {
                None => assert_eq!(result, Ok(()), "{parameters:?}"),
                Some(name) => assert_eq!(
                    result,
                    Err(StartupRefusal::Guarded(name.to_string())),
                    "{parameters:?}"
                ),
            }
        }
        assert_eq!(
            check(&pairs(&[("options", "-d 5")]), &allowed),
            Err(StartupRefusal::Switch("-d".to_string()))
        );
        assert_eq!(
            check(&pairs(&[("client_encoding", "SJIS")]), &allowed),
            Err(StartupRefusal::Encoding("SJIS".to_string()))
        );
    }
}
