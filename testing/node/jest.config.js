// Jest runs only the *.spec.js examples (node --test runs the *.test.js ones). One nephos is
// started for the whole run by jest/global-setup.js; each test makes its own cloud.
'use strict';
module.exports = {
  testEnvironment: 'node',
  testMatch: ['<rootDir>/examples/**/*.spec.js'],
  globalSetup: '<rootDir>/jest/global-setup.js',
  globalTeardown: '<rootDir>/jest/global-teardown.js',
};
