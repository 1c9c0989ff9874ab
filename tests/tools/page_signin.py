"""Signs in on the worklist page with the hospital's OpenID provider in headless Chromium, opens
a study, records a verdict and signs out, as a radiologist would.

Usage: page_signin.py URL USER STUDY_UID RESULT_ID agree|disagree NOTE

Chromium is driven over the DevTools protocol: the page is opened and shows its sign-in link;
the link leads to the provider (oidc-provider's login form, any password), whose consent is
given; back on the page the study's row is clicked and the verdict's button; then Sign out.
Prints JSON: {"you": the page's line naming the user, "recorded": the verdict's id, "said":
the page's text after recording, "cookie": the session cookie's value before signing out,
"signed_out": whether the page asked for a sign-in again after it}.
"""
import json
import sys

from page_verdict import open_chromium, record_verdict


def main():
    url, user, study, result, verdict, note = sys.argv[1:7]
    chromium, cdp = open_chromium()
    try:
        cdp.call("Page.navigate", url=url)
        # not signed in: the page offers the provider's sign-in
        cdp.until("getComputedStyle(document.getElementById('signIn')).display !== 'none'")
        cdp.run("document.querySelector('#signIn a').click()")
        # the provider's login form (oidc-provider's development interactions)
        cdp.until("document.querySelector('input[name=login]')")
        cdp.run("document.querySelector('input[name=login]').value = %s;"
                "document.querySelector('input[name=password]').value = 'any password';"
                "document.querySelector('input[name=login]').form.submit()" % json.dumps(user))
        # its consent page: a form without a login field
        cdp.until("location.pathname.startsWith('/interaction/') && document.forms.length > 0"
                  " && !document.querySelector('input[name=login]')")
        cdp.run("document.forms[0].submit()")
        # back on the worklist, signed in
        row = "document.querySelector('tr.study[data-uid=%s]')" % json.dumps(study)
        cdp.until(row)
        you = cdp.until("document.getElementById('updated').textContent.includes('(') &&"
                        " document.getElementById('updated').textContent")
        recorded, said = record_verdict(cdp, study, result, verdict, note)
        cookies = cdp.call("Network.getCookies", urls=[url])["cookies"]
        cookie = next(c["value"] for c in cookies if c["name"] == "pneumotriage_session")
        cdp.until("getComputedStyle(document.getElementById('signOut')).display !== 'none'")
        cdp.run("document.querySelector('#signOut button').click()")
        signed_out = cdp.until("getComputedStyle(document.getElementById('signIn')).display !== 'none'")
        print(json.dumps({"you": you, "recorded": recorded, "said": said, "cookie": cookie,
                          "signed_out": signed_out}))
    finally:
        chromium.kill()
        chromium.wait()


if __name__ == "__main__":
    main()
