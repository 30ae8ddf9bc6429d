"""SSH front end: the forced command of lfsserve's authorized_keys lines.

sshd authenticates a key and runs `lfsserve ssh --config ... --user NAME` with the client's
command in SSH_ORIGINAL_COMMAND; `run_forced_command` accepts exactly three shapes of it
(command.py), never through a shell, checks the user's permission with the same access rules as
HTTP, and dispatches:

    hg -R REPO serve --stdio                  hg.py: wire protocol v1 over stdio, on the wire v1 commands
    git-lfs-authenticate REPO upload|download authenticate.py: a token for the HTTP LFS API
    git-lfs-transfer REPO upload|download     transfer.py: git-lfs's pure-SSH protocol, on LfsService

When an lfsserve server runs on the same data directory with the same configuration file, the
forced command does not serve the session itself: forward.py (standard library only, so it starts
fast) passes its stdin, stdout and stderr to the server over a Unix socket, and the server serves
the session (handoff.py) with its warm caches; otherwise, or when the server declines, the forced
command serves it as above.

keys.py manages the authorized_keys file (and answers sshd's AuthorizedKeysCommand). This package
imports the kernel (auth, config, routing), the stores and the services other front ends share
(the LFS service, the transport-free wire v1 commands and transport helpers), nothing else of them.
"""

# Nothing is imported here: `lfsserve ssh` first runs forward.py, which must not pay for the rest.
