// Starts one nephos for the Jest run. The environment variables set here reach every test
// file: NEPHOS_BASE_URL for connectNephos(), and CLOUDINARY_URL, which must name nephos (an
// http upload_prefix) before anything requires the cloudinary SDK.
'use strict';
const { startNephos } = require('../nephos');

module.exports = async function globalSetup() {
  const nephos = await startNephos();
  globalThis.__NEPHOS__ = nephos; // for global-teardown.js (same process)
  process.env.NEPHOS_BASE_URL = nephos.baseUrl;
  process.env.CLOUDINARY_URL = nephos.cloudinaryUrl;
};
