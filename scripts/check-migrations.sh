#!/usr/bin/env bash
# Checks that the SQL migrations in migrations/ are append-only.
#
# Why: sqlx records every applied migration with a checksum of its file
# (alphadome._sqlx_migrations) and refuses to start on a database where an
# applied migration's file has changed or is missing. A migration that was
# ever committed may have been applied somewhere, so once committed it is
# never edited, renamed or deleted: a change to the schema is a new file.
#
# Fails (exit 1, naming the file and the commit) when
#   - a migration file (committed, or edited only in the working tree)
#     differs from the content it had in the commit that first added it;
#   - a migration file added in or after the commit that added the oldest
#     current migration file has been deleted or renamed (in a commit or in
#     the working tree). Files added before that commit are exempt: a squash
#     adds all current files and deletes all older ones in one commit;
#   - an entry of migrations/ does not follow sqlx's naming
#     (<version digits>_<name>.sql), or two files share a version.
# New files not yet in any commit are allowed: they are new migrations.
#
# Needs the full history (first-add commits); a shallow clone is deepened.
# Usage: bash scripts/check-migrations.sh   (from anywhere in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."

dir=migrations
errors=()
fail() { errors+=("$1"); }

if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "check-migrations: $(pwd) is not a git repository; the check needs its history" >&2
  exit 1
fi
if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
  if ! git fetch --unshallow --quiet; then
    echo "check-migrations: this clone is shallow and 'git fetch --unshallow' failed;" \
      "the check needs the full history (e.g. actions/checkout with fetch-depth: 0)" >&2
    exit 1
  fi
fi
if [ ! -d "$dir" ]; then
  echo "check-migrations: no $dir/ directory in $(pwd)" >&2
  exit 1
fi
has_head=true
git rev-parse --verify --quiet HEAD >/dev/null || has_head=false

# The commit that first added path $1 (empty when no commit has). Renames
# count as a deletion and an addition.
first_added() {
  $has_head || return 0
  git log --no-renames --diff-filter=A --format=%H --reverse -- "$1" | head -n 1
}
short() { git rev-parse --short "$1"; }

# 1. Naming, and one file per version.
shopt -s nullglob dotglob
files=()
declare -A file_of_version=()
for path in "$dir"/*; do
  name=${path#"$dir"/}
  if [ ! -f "$path" ] || [[ ! $name =~ ^([0-9]+)_[A-Za-z0-9_]+\.sql$ ]]; then
    fail "$path: not a migration file name; sqlx expects <version digits>_<name>.sql (letters, digits, underscores)"
    continue
  fi
  version=$(sed 's/^0*//' <<<"${BASH_REMATCH[1]}")
  version=${version:-0}
  if [ -n "${file_of_version[$version]:-}" ]; then
    fail "$path: version $version is also the version of ${file_of_version[$version]}"
  else
    file_of_version[$version]=$path
  fi
  files+=("$path")
done
shopt -u nullglob dotglob

# 2. Every committed migration file is byte for byte what its first commit
#    added. Also finds the oldest current file's commit (the baseline).
baseline=""
committed=0
for path in "${files[@]}"; do
  added=$(first_added "$path")
  [ -n "$added" ] || continue # new, not yet committed
  committed=$((committed + 1))
  if ! git show "$added:$path" | cmp -s - "$path"; then
    if git show "HEAD:$path" 2>/dev/null | cmp -s - "$path"; then
      where="in commit $(git log -1 --format=%h -- "$path")"
    else
      where="in the working tree"
    fi
    fail "$path: changed $where since commit $(short "$added") added it (committed migrations are append-only; put the change in a new migration)"
  fi
  if [ -z "$baseline" ] || git merge-base --is-ancestor "$added" "$baseline"; then
    baseline=$added
  fi
done

# 3. No migration added in or after the baseline commit is gone, whether
#    deleted (or renamed away) in a commit or only in the working tree.
if [ -n "$baseline" ]; then
  declare -A seen=()
  check_gone() { # path, where it went ("deleted in commit X" / "deleted in the working tree")
    local path=$1 how=$2 added
    [ -z "${seen[$path]:-}" ] || return 0
    seen[$path]=1
    [ ! -e "$path" ] || return 0
    added=$(first_added "$path")
    [ -n "$added" ] || return 0
    if [ "$added" != "$baseline" ] && git merge-base --is-ancestor "$added" "$baseline"; then
      return 0 # older than the current set: removed by a squash
    fi
    fail "$path: added in commit $(short "$added"), $how (committed migrations are never deleted or renamed)"
  }
  while IFS= read -r path; do
    check_gone "$path" "deleted or renamed in the working tree"
  done < <(git ls-tree -r --name-only HEAD -- "$dir/")
  commit=""
  while IFS= read -r line; do
    case $line in
      commit\ *) commit=${line#commit } ;;
      "") ;;
      *) check_gone "$line" "deleted or renamed in commit $(short "$commit")" ;;
    esac
  done < <(git log --no-renames --diff-filter=D --name-only --format='commit %H' -- "$dir/")
fi

if [ ${#errors[@]} -gt 0 ]; then
  printf 'check-migrations: %s\n' "${errors[@]}" >&2
  echo "check-migrations: ${#errors[@]} problem(s); see the header of scripts/check-migrations.sh" >&2
  exit 1
fi
new=$((${#files[@]} - committed))
pending=""
[ "$new" -eq 0 ] || pending=" ($new not yet committed)"
echo "migrations: ${#files[@]} files, none changed since first committed$pending"
