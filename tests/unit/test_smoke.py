import pyotp

from tests.factories import PASSWORD


def test_healthz_answers_ok(client):
    assert client.get("/healthz").json == {"status": "ok"}


def test_enrol_and_sign_in_with_totp(client, factory):
    tenant = factory.tenant()
    user = factory.user(tenant)
    hdr = {"X-Rekey-Tenant": tenant.slug}
    r = client.post("/v1/auth/signin", json={"email": user.email, "password": PASSWORD}, headers=hdr)
    assert r.status_code == 200, r.json
    assert r.json["status"] == "enrolment_required"
    token = r.json["token"]
    auth = {"Authorization": f"Bearer {token}"}
    r = client.post("/v1/auth/enrol/totp", headers=auth)
    assert r.status_code == 201, r.json
    totp = pyotp.TOTP(r.json["secret"])
    r = client.post("/v1/auth/enrol/totp/confirm", json={"code": totp.now()}, headers=auth)
    assert r.status_code == 200, r.json
    assert r.json["status"] == "active"
