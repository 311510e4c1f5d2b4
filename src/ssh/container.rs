//! Container targets: the command the bastion runs on the container's SSH host.
//!
//! A shell becomes `<runtime> exec -it <container> /bin/sh`; an exec becomes
//! `<runtime> exec -i <container> /bin/sh -c '<command>'` (with `-t` when the engineer has a pty).
//! Every word that comes from config or from the engineer is quoted with POSIX shell rules, so
//! the host's shell runs exactly one runtime command whatever the engineer types (issue #3).

use crate::config::ContainerRuntime;

/// The command line to run on the host for a channel into `container`.
pub fn host_command(
    runtime: ContainerRuntime,
    container: &str,
    pty: bool,
    command: Option<&str>,
) -> String {
    let program = match runtime {
        ContainerRuntime::Docker => "docker",
        ContainerRuntime::Podman => "podman",
        ContainerRuntime::Kubectl => "kubectl",
    };
    let mut words: Vec<String> = vec![program.into(), "exec".into()];
    words.push(if pty { "-it".into() } else { "-i".into() });
    words.push(container.to_string());
    if runtime == ContainerRuntime::Kubectl {
        words.push("--".into());
    }
    words.push("/bin/sh".into());
    if let Some(command) = command {
        words.push("-c".into());
        words.push(command.to_string());
    }
    shell_words::join(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_built_and_quoted() {
        use ContainerRuntime::{Docker, Kubectl, Podman};
        let cases: &[(ContainerRuntime, &str, bool, Option<&str>, &str)] = &[
            (Docker, "api", true, None, "docker exec -it api /bin/sh"),
            (
                Podman,
                "api",
                false,
                Some("uptime"),
                "podman exec -i api /bin/sh -c uptime",
            ),
            (
                Kubectl,
                "api-7d9f",
                false,
                Some("ls -l /"),
                "kubectl exec -i api-7d9f -- /bin/sh -c 'ls -l /'",
            ),
            (
                Docker,
                "api",
                false,
                Some("echo 'hi'; rm -rf / $(id)"),
                "docker exec -i api /bin/sh -c 'echo '\\''hi'\\''; rm -rf / $(id)'",
            ),
            (
                Docker,
                "my api;reboot",
                true,
                None,
                "docker exec -it 'my api;reboot' /bin/sh",
            ),
        ];
        for (runtime, container, pty, command, expected) in cases {
            assert_eq!(host_command(*runtime, container, *pty, *command), *expected);
        }
    }

    #[test]
    fn the_host_shell_sees_exactly_the_words_intended() {
        let hostile = "a'b\"c $(d) `e` ; f | g && h\nnewline \\ end";
        let line = host_command(ContainerRuntime::Docker, "x", false, Some(hostile));
        let words = shell_words::split(&line).unwrap_or_default();
        assert_eq!(words.last().map(String::as_str), Some(hostile));
        assert_eq!(words.len(), 7);
    }
}
