// A real OAuth 2.x authorization server for tests/e2e/test_oauth.py: npm `oauth2-mock-server` (installed
// under tools/oauth by tools/install-node.sh), bound to 127.0.0.1 only.
//
//   node tests/e2e/oauth_server.mjs <port>     (0 = any free port)
//
// Generates one RS256 signing key, serves /.well-known/openid-configuration, /jwks and /token, and in
// `beforeTokenSigning` sets the access token's `aud` from the token request's RFC 8707 `resource`
// parameter (`aud` is dropped when there is none), `client_id`/`sub` from the client's credentials and a
// `groups` claim of ["support"]. Prints `READY <port>` on stdout once listening; stops on SIGTERM/SIGINT.
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '..', '..', 'tools', 'oauth', 'package.json'));
const { OAuth2Server, Events } = await import(require.resolve('oauth2-mock-server'));

const port = Number(process.argv[2] ?? '0');
const server = new OAuth2Server();
await server.issuer.keys.generate('RS256');

function basicClientId(header) {
  const match = /^Basic\s+(\S+)$/i.exec(header ?? '');
  if (!match) return undefined;
  const decoded = Buffer.from(match[1], 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  return decodeURIComponent(colon < 0 ? decoded : decoded.slice(0, colon));
}

server.service.on(Events.BeforeTokenSigning, (token, req) => {
  const body = req.body ?? {};
  const resource = Array.isArray(body.resource) ? body.resource[0] : body.resource;
  if (typeof resource === 'string' && resource !== '') {
    token.payload.aud = resource;
  } else {
    delete token.payload.aud;
  }
  const clientId = basicClientId(req.headers.authorization) ?? body.client_id;
  if (typeof clientId === 'string') {
    token.payload.client_id = clientId;
    token.payload.sub ??= clientId;
  }
  token.payload.groups = ['support'];
});

await server.start(port, '127.0.0.1');
// The issuer must name the address we bound (the package would otherwise say http://localhost:<port>).
server.issuer.url = `http://127.0.0.1:${server.address().port}`;
process.stdout.write(`READY ${server.address().port}\n`);

const shutdown = () => {
  server.stop().finally(() => process.exit(0));
};
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
