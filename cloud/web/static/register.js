// Registration form: the business's name and number are shown, and required, only when
// "a business" is chosen.
"use strict";

(function () {
  const form = document.getElementById("register-form");
  if (!form) return;
  const box = document.getElementById("business-fields");
  const inputs = box.querySelectorAll("input");

  function sync() {
    const business = form.querySelector('input[name="account_type"]:checked').value === "business";
    box.hidden = !business;
    inputs.forEach((input) => {
      input.required = business;
      input.disabled = !business; // an individual sends no business fields
    });
  }

  form.addEventListener("change", (ev) => {
    if (ev.target.name === "account_type") sync();
  });
  sync();
})();
