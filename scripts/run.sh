#!/usr/bin/env bash
# Set up (idempotent) and mount the embedded default instance (SQLite catalog + local storage under
# ~/.local/share/lamfs, or $LAMFS_HOME). Usage: bash scripts/run.sh [MOUNTPOINT]  (default ~/lamfs)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
mnt="${1:-$HOME/lamfs}"
mkdir -p "$mnt"
"${VENV:-$here/.venv}/bin/lamfs" mount "$mnt"
echo "try: cp some-file $mnt/ && ls -l $mnt && getfattr -d $mnt/some-file; unmount: ${VENV:-$here/.venv}/bin/lamfs umount $mnt"
