# Sourced, not run. A private apt configuration that sees one other Debian
# suite (sid, trixie) without touching the system's: its own sources,
# preferences, lists and cache under one directory, with a pin of -1 on the
# suite so nothing can be installed from it even by mistake. `apt-get
# download PKG/SUITE` still fetches from it, and `dpkg -x` unpacks what it
# fetched.
#
#   . scripts/lib/apt-suite.sh
#   apt_suite DIR SUITE          # writes the configuration, sets APT_SUITE_OPTS
#   apt-get "${APT_SUITE_OPTS[@]}" update -qq
#   apt-get "${APT_SUITE_OPTS[@]}" download -qq PKG/SUITE

# apt_suite_sources SUITE: the deb822 stanza for SUITE from deb.debian.org.
apt_suite_sources() {
  cat <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: $1
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
}

# apt_suite_pin SUITE PRIORITY: an apt preferences entry for every package of SUITE.
apt_suite_pin() {
  cat <<PIN
Package: *
Pin: release n=$1
Pin-Priority: $2
PIN
}

apt_suite() {
  local dir=$1 suite=$2
  mkdir -p "$dir/sources" "$dir/preferences" "$dir/lists/partial" "$dir/cache/archives/partial"
  apt_suite_sources "$suite" > "$dir/sources/$suite.sources"
  apt_suite_pin "$suite" -1 > "$dir/preferences/$suite"
  APT_SUITE_OPTS=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$dir/sources"
    -o "Dir::Etc::PreferencesParts=$dir/preferences"
    -o "Dir::State::Lists=$dir/lists"
    -o "Dir::Cache=$dir/cache"
    # Downloads land in directories the _apt user may not write.
    -o "APT::Sandbox::User=$(id -un)"
  )
}
