import { api, setKey, showError } from "./common.js";

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("key");
  setKey(input.value.trim());
  input.value = "";
  try {
    await api("/models"); // a wrong key answers 401 with the API's message
    location.assign("/ui/jobs");
  } catch (error) {
    sessionStorage.clear();
    showError(error);
  }
});
