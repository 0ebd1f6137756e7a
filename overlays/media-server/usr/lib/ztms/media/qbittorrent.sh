#!/bin/sh
# Starts qBittorrent with its profile on /data/config/qbittorrent and its
# downloads on /data/torrents. At first start it writes a configuration
# that accepts the legal notice, binds the Web UI to port 8080, and lets
# the reverse proxy in without a second login: the proxy has already
# checked the user's password.
set -eu

conf=/config/qBittorrent/config/qBittorrent.conf
proxy=$(getent hosts proxy | cut -d ' ' -f 1)
if [ -z "$proxy" ]; then
    echo "qbittorrent: the proxy has no address in /etc/hosts" >&2
    exit 1
fi

if [ ! -e "$conf" ]; then
    mkdir -p "$(dirname "$conf")"
    cat > "$conf.new" <<CONF
[LegalNotice]
Accepted=true

[BitTorrent]
Session\DefaultSavePath=/downloads
Session\TempPath=/downloads/incomplete
Session\TempPathEnabled=true

[Preferences]
WebUI\Port=8080
WebUI\HostHeaderValidation=false
WebUI\AuthSubnetWhitelistEnabled=true
WebUI\AuthSubnetWhitelist=$proxy/32
WebUI\LocalHostAuth=true
CONF
    mv "$conf.new" "$conf"
fi

exec /usr/bin/qbittorrent-nox --profile=/config --webui-port=8080
