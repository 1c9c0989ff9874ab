// A real OpenID provider for the tests: npm's oidc-provider (an OpenID Certified implementation),
// with one client for the node and two people: dr.house (radiologist) and nurse.joy (viewer).
// Its signing key is the test's own (a private JWK file), so that a test can also mint tokens the
// provider would; it publishes the public half at its jwks_uri.
//
// usage: node provider.mjs PORT KEY.jwk.json CLIENT_ID REDIRECT_URI
// Prints "listening on PORT" once it accepts connections.
import fs from 'node:fs';
import Provider from 'oidc-provider';

const [port, keyFile, clientId, redirectUri] = process.argv.slice(2);
const key = JSON.parse(fs.readFileSync(keyFile, 'utf8'));
const roles = { 'dr.house': ['radiologist'], 'nurse.joy': ['viewer'] };

const provider = new Provider(`http://127.0.0.1:${port}`, {
  clients: [{
    client_id: clientId,
    client_secret: 'a-client-secret-for-the-node',
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
  }],
  jwks: { keys: [key] },
  findAccount: (ctx, id) => ({
    accountId: id,
    claims: () => ({ sub: id, preferred_username: id, roles: roles[id] ?? [] }),
  }),
  claims: { openid: ['sub'], profile: ['preferred_username', 'roles'] },
  // the ID token carries the profile's claims (the roles among them), as Keycloak's and AD FS's
  // claim mappers do; the standard default would keep them for the userinfo endpoint
  conformIdTokenClaims: false,
  features: { devInteractions: { enabled: true } },
});
provider.listen(Number(port), '127.0.0.1', () => console.log(`listening on ${port}`));
