#!/bin/sh
# Starts nginx as the entrance of media-server-oci: a copy of media/proxy.sh
# of the default appliance, without its MiniDLNA step and with the nginx.conf
# of this overlay. At first start it creates a local certificate authority
# and a server certificate signed by it on /data/config/proxy/tls. A
# certificate of the user's own in /data/config/proxy/custom (fullchain.pem
# and privkey.pem) takes its place.
# The web login is "admin" with the password in the web-password secret.
set -eu

state=/config
tls=$state/tls
host=$(cat /etc/hostname)
mkdir -p /tmp/nginx "$tls"

if [ -s "$state/custom/fullchain.pem" ] && [ -s "$state/custom/privkey.pem" ]; then
    cert=$state/custom/fullchain.pem
    key=$state/custom/privkey.pem
    echo "proxy: using the certificate in $state/custom"
else
    cert=$tls/server.pem
    key=$tls/server.key
    if [ ! -s "$cert" ] || [ ! -s "$key" ]; then
        echo "proxy: creating a local certificate authority and a certificate for $host"
        work=$(mktemp -d /tmp/tls.XXXXXX)
        umask 077
        openssl req -x509 -new -noenc -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
            -keyout "$work/ca.key" -out "$work/ca.pem" -days 3650 -subj "/CN=ztms local CA for $host" \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>&1
        openssl req -new -noenc -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
            -keyout "$work/server.key" -out "$work/server.csr" -subj "/CN=$host" 2>&1
        printf 'subjectAltName=DNS:%s,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' "$host" > "$work/ext.cnf"
        openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
            -days 825 -extfile "$work/ext.cnf" -out "$work/server.pem" 2>&1
        # The CA first: a certificate without its CA on disk is made anew.
        mv "$work/ca.key" "$work/ca.pem" "$tls/"
        mv "$work/server.key" "$tls/server.key"
        mv "$work/server.pem" "$tls/server.pem"
        rm -rf "$work"
        umask 022
        echo "proxy: import $tls/ca.pem into your browsers to trust this appliance"
    fi
fi
printf 'ssl_certificate %s;\nssl_certificate_key %s;\n' "$cert" "$key" > /tmp/nginx/tls.conf

# The login: "admin" and the generated password, hashed with SHA-512 crypt.
password=/run/secrets/web-password
if [ ! -s "$password" ]; then
    echo "proxy: the secret $password is missing; nginx does not start without a login" >&2
    exit 1
fi
printf 'admin:%s\n' "$(openssl passwd -6 -stdin < "$password")" > /tmp/nginx/htpasswd

exec /usr/sbin/nginx -e stderr -c /usr/lib/ztms/media-oci/nginx.conf -g 'daemon off;'
