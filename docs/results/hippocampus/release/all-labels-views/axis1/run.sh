#!/usr/bin/env bash
# See ../run.sh: the release recipe on slices along axis 1.
exec bash "$(cd "$(dirname "$0")" && pwd)/../run.sh" 1 "$@"
