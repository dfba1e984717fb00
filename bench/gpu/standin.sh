#!/usr/bin/env bash
# A stand-in, on this machine, for the device tool that runs a command on a lent GPU machine (its limits:
# /work/.library/device/README.md). Runs COMMAND with bash from a copy of the working tree (tracked and untracked
# files git does not ignore, plus the carried paths; refused over 64 MiB) with an empty folder in $OUT, kills its
# process group at the limit (SIGKILL, no warning; exit 137), and returns only what the tool returns: at most 8 plain
# files from $OUT, 16 MiB each and 64 MiB together, no more than 2 folders down, every file and folder named in
# letters, digits, '.', '_' and '-' alone; and the last 12,000 characters of stdout and stderr together. What it
# leaves out is listed with the reason. Unlike the tool it also kills what the command started in a session of its
# own (the tool leaves those running), so that nothing outlives it here.
#
# Usage: bench/gpu/standin.sh [--limit S] [--carry PATH]... [--result DIR] [--] COMMAND
#   --limit S    seconds before the kill (default 600, times ZT_STANDIN_TIME_SCALE when that is set)
#   --carry P    an ignored path, relative to the repository root, that travels with the tree (e.g. bench/gpu/bundle)
#   --result D   where the returned files (D/files/), the output tail (D/output_tail.txt) and the report
#                (D/report.txt: rc, timed_out, limit_s, wall_s, files, files_left_out, not_carried) go; default a
#                new folder under TMPDIR
# Exit: COMMAND's status (137 when killed at the limit); 2 for a usage error or a tree over 64 MiB.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
limit=$(awk -v k="${ZT_STANDIN_TIME_SCALE:-1}" 'BEGIN { printf "%g", 600 * k }')
carry=()
result=""
usage() { echo "usage: $0 [--limit S] [--carry PATH]... [--result DIR] [--] COMMAND" >&2; exit 2; }
while (($#)); do
  case $1 in
    --limit) [[ ${2:-} =~ ^[0-9]*\.?[0-9]+$ ]] || usage; limit=$2; shift 2 ;;
    --carry) [[ -n ${2:-} ]] || usage; carry+=("$2"); shift 2 ;;
    --result) [[ -n ${2:-} ]] || usage; result=$2; shift 2 ;;
    --) shift; break ;;
    -*) usage ;;
    *) break ;;
  esac
done
(($# == 1)) || usage
command=$1
max_files=8 max_file_bytes=$((16 << 20)) max_total_bytes=$((64 << 20)) max_tree_bytes=$((64 << 20))
tail_chars=12000

work=$(mktemp -d "${TMPDIR:-/tmp}/zt-standin.XXXXXX")
trap 'rm -rf "$work"' EXIT
[[ -n $result ]] || result=$(mktemp -d "${TMPDIR:-/tmp}/zt-standin-result.XXXXXX")
if ! rm -rf "$result" || ! mkdir -p "$result/files"; then echo "standin.sh: cannot create $result" >&2; exit 2; fi

# ---- the tree that travels ----
tree=$work/tree
mkdir -p "$tree"
git -C "$repo" ls-files -z -co --exclude-standard |
  tar -C "$repo" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$tree" -xf -
not_carried=()
for p in "${carry[@]}"; do
  rm -rf "${tree:?}/$p"
  if [[ -e $repo/$p ]]; then
    tar -C "$repo" -cf - "$p" | tar -C "$tree" -xf -
  else
    not_carried+=("$p")
  fi
done
tree_bytes=$(du -sb "$tree" | cut -f1)
if ((tree_bytes > max_tree_bytes)); then
  echo "standin.sh: the working tree is larger than 64 MiB ($tree_bytes bytes with the carried paths)" >&2
  exit 2
fi

# ---- the command, in a session of its own, killed with its process group at the limit ----
out=$work/out
mkdir -p "$out"
tag=standin.$$
start=$(date +%s.%N)
(cd "$tree" && OUT=$out ZT_STANDIN_TAG=$tag exec setsid bash -c "$command") </dev/null >"$work/output.log" 2>&1 &
pid=$!
# Polled, not a watchdog process: nothing of this script outlives it holding its output open.
deadline=$(awk -v a="$start" -v l="$limit" 'BEGIN { printf "%.3f", a + l }')
timed_out=false
while kill -0 "$pid" 2>/dev/null; do  # bash reaps its finished child at once: kill -0 then fails
  if awk -v n="$(date +%s.%N)" -v d="$deadline" 'BEGIN { exit !(n >= d) }'; then
    kill -KILL -- "-$pid" 2>/dev/null
    timed_out=true
    break
  fi
  sleep 0.2
done
{ wait "$pid"; } 2>/dev/null  # no "Killed" notice from bash: the report says so
rc=$?
[[ $timed_out == true ]] && rc=137
wall=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
# What is left: the command's process group (the tool ends it), then anything else carrying the tag.
kill -KILL -- "-$pid" 2>/dev/null
leftover=$(grep -lzx "ZT_STANDIN_TAG=$tag" /proc/[0-9]*/environ 2>/dev/null | awk -F/ -v me=$$ '$3 != me { print $3 }')
# shellcheck disable=SC2086
[[ -n $leftover ]] && kill -KILL $leftover 2>/dev/null

# ---- what comes back from $OUT ----
files=()
left_out=()
n_kept=0 total=0
good_name() { [[ $1 =~ ^[A-Za-z0-9._-]+$ ]]; }
while IFS= read -r -d '' p; do
  rel=${p#"$out"/}
  [[ -d $p && ! -L $p ]] && continue  # folders are judged through the files in them
  slashes=${rel//[^\/]/}
  why=""
  if [[ -L $p ]]; then
    why="a link"
  elif [[ ! -f $p ]]; then
    why="not a plain file"
  else
    IFS=/ read -r -a parts <<<"$rel"
    for part in "${parts[@]}"; do good_name "$part" || why="a name with odd characters"; done
    size=$(stat -c %s "$p")
    if [[ -n $why ]]; then
      :
    elif ((${#slashes} > 2)); then
      why="a folder too deep"
    elif ((size > max_file_bytes)); then
      why="over 16 MiB"
    elif ((n_kept >= max_files)); then
      why="over 8 files"
    elif ((total + size > max_total_bytes)); then
      why="over 64 MiB together"
    fi
  fi
  if [[ -n $why ]]; then
    left_out+=("$rel ($why)")
    continue
  fi
  mkdir -p "$result/files/$(dirname "$rel")"
  cp "$p" "$result/files/$rel"
  files+=("$rel")
  n_kept=$((n_kept + 1)) total=$((total + size))
done < <(find "$out" -mindepth 1 -print0 | sort -z)

tail -c "$tail_chars" "$work/output.log" >"$result/output_tail.txt"
{
  echo "rc: $rc"
  echo "timed_out: $timed_out"
  echo "limit_s: $limit"
  echo "wall_s: $wall"
  echo "files: ${files[*]}"
  echo "files_left_out: $( ((${#left_out[@]})) && printf '%s; ' "${left_out[@]}")"
  echo "not_carried: ${not_carried[*]}"
} >"$result/report.txt"
cat "$result/report.txt"
echo "files_at: $result/files"
echo "output_tail:"
cat "$result/output_tail.txt"
exit "$rc"
