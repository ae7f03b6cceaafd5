#!/usr/bin/env bash
# What the tests need from Debian: the aarch64 user-mode emulator (qemu device), an ssh
# server and client (the ssh transport is tested against a real sshd on loopback), and the
# CNCF distribution registry with htpasswd (push/pull/ls are tested against a real registry),
# and the C++ compilers that build the ExecuTorch runner (executorch_cpp) for x86-64 and aarch64.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v g++ >/dev/null || need+=(g++)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
